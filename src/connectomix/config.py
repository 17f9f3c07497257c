"""Config loading and validation against ``schemas/config.schema.yaml``, with defaults filled in.

The schema is the only place a default is written: :func:`validate` fills a whole config (the workflow, in
``rules/common.smk``, and ``connectomix check-config``), :func:`defaults` gives one section's defaults and
:func:`resolve` merges a stage's (possibly partial) parameters over them.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from pathlib import Path

import yaml

from connectomix.phantom.params import PhantomParams
from connectomix.phantom.tissue import check_somata_fit

SCHEMA_FILE = "config.schema.yaml"


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    text = resources.files("connectomix").joinpath("schemas", SCHEMA_FILE).read_text()
    return yaml.safe_load(text)


def schema_path() -> Path:
    return Path(str(resources.files("connectomix").joinpath("schemas", SCHEMA_FILE)))


def _resolve(node: dict, root: dict) -> dict:
    while "$ref" in node:
        target = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _fill(value, node: dict, root: dict):
    node = _resolve(node, root)
    if value is None and "default" in node:
        value = copy.deepcopy(node["default"])
    if isinstance(value, dict):
        for key, sub in node.get("properties", {}).items():
            filled = _fill(value.get(key), sub, root)
            if filled is not None or key in value or "default" in _resolve(sub, root):
                value[key] = filled  # a null default is filled too
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in node.get("properties", {}):
                    value[key] = _fill(value[key], extra, root)
    return value


def validate(config: dict, source: str = "config") -> dict:
    """Validate ``config`` and return a copy with every default filled in.

    Raises ``ValueError`` naming the offending key, the value and what the schema expects.
    """
    import jsonschema

    root = schema()
    validator = jsonschema.Draft202012Validator(root)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        # Descend into oneOf/anyOf so the message names the deepest offending key.
        while error.context:
            error = jsonschema.exceptions.best_match(error.context)
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ValueError(f"{source}: invalid value at '{where}': {error.message}")
    config = _fill(copy.deepcopy(config), root, root)
    _check_consistency(config, source)
    return config


def _check_consistency(config: dict, source: str) -> None:
    for name, dataset in config["datasets"].items():
        kinds = [key for key in ("phantom", "source") if key in dataset]
        if len(kinds) != 1:
            raise ValueError(
                f"{source}: dataset '{name}' must have exactly one of 'phantom' (generate) or 'source' (ingest), "
                f"found {kinds or 'neither'}"
            )
        if kinds == ["phantom"]:
            try:
                check_somata_fit(PhantomParams.from_dict(dataset["phantom"]), dataset["voxel_size"])
            except ValueError as error:
                raise ValueError(f"{source}: datasets.{name}.{error}") from None
    names = set(config["datasets"])
    references = {
        "train.dataset": [config["train"]["dataset"]] if config["train"].get("dataset") else [],
        "segment.evaluation.ground_truth": list(config["segment"]["evaluation"]["ground_truth"]),
        "synapses.evaluation.ground_truth": list(config["synapses"]["evaluation"]["ground_truth"]),
        "coregister.functional": list(config["coregister"]["functional"]),
        "coregister.landmarks": list(config["coregister"]["landmarks"]),
    }
    for key, used in references.items():
        unknown = sorted(set(used) - names)
        if unknown:
            raise ValueError(f"{source}: {key} names dataset {', '.join(map(repr, unknown))}, which is not in "
                             f"datasets (known: {', '.join(sorted(names))})")
    agglomerate = config["segment"]["agglomerate"]
    if agglomerate["method"] == "learned" and not agglomerate.get("edge_model"):
        raise ValueError(f"{source}: segment.agglomerate.method 'learned' needs segment.agglomerate.edge_model, "
                         "the path of a model written by `connectomix segment train-edges`")
    chunk = config["storage"]["chunk_shape"]
    block = config["blocks"]["shape"]
    if any(b % c for b, c in zip(block, chunk)):
        raise ValueError(
            f"{source}: blocks.shape {block} must be a multiple of storage.chunk_shape {chunk} (z, y, x)"
        )


def load(path: str | Path) -> dict:
    """Read a YAML config file, validate it and fill defaults."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    return validate(config, source=str(path))


@functools.lru_cache(maxsize=None)
def _defaults(section: str) -> dict:
    root = schema()
    if section not in root["properties"]:
        raise ValueError(f"unknown config section {section!r} (known: {', '.join(root['properties'])})")
    return _fill(None, root["properties"][section], root)


def defaults(section: str) -> dict:
    """The defaults of config section ``section`` (e.g. "segment"), filled at every depth from the schema."""
    return copy.deepcopy(_defaults(section))


def resolve(section: str, params: dict | None = None, omit=()) -> dict:
    """``params`` (a partial or filled config section) merged over :func:`defaults` of ``section``.

    A key the schema does not have is an error naming its path (``segment.fragments.bogus``); mappings the schema
    leaves free-form (e.g. ``evaluation.ground_truth``) are replaced whole. Top-level keys in ``omit`` (the
    workflow's, not the stage's) are accepted and left out of the result.
    """
    root = schema()
    out = _merge(_defaults(section), params or {}, section, root["properties"][section], root)
    return {key: value for key, value in out.items() if key not in omit} if omit else out


def _merge(base: dict, update: dict, path: str, node: dict, root: dict) -> dict:
    known = _resolve(node, root)["properties"]
    for key in update:
        if key not in known:
            raise ValueError(f"unknown parameter {path}.{key} (known: {', '.join(sorted(known))})")
    out = {}
    for key in {**base, **update}:
        default, value, sub = base.get(key), update.get(key), _resolve(known[key], root)
        if key not in update or (value is None and isinstance(default, dict)):
            out[key] = copy.deepcopy(default)
        elif isinstance(value, dict) and isinstance(default, dict) and "properties" in sub:
            out[key] = _merge(default, value, f"{path}.{key}", sub, root)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --- CLI: `connectomix check-config` ---------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML config file to validate")
    parser.add_argument("--print", action="store_true", help="print the config with defaults filled in")


def run(args) -> int:
    config = load(args.config)
    if args.print:
        print(yaml.safe_dump(config, sort_keys=False))
    else:
        print(f"{args.config}: valid ({len(config['datasets'])} dataset(s))")
    return 0
