"""The predict stage's workflow glue: which checkpoint predicts, its context (the predict blocks' halo) and the
labels a model trained here learns from (rules/predict.smk)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from connectomix.workflow.args import file_args, roi_offset_args


def locate_shipped_models(cfg: dict, repo_dir) -> None:
    """Relative paths in the config are relative to the working directory, except the shipped models: when the
    working directory (``--directory``) has no copy of ``predict.checkpoint``, ``segment.agglomerate.edge_model`` or
    ``synapses.partner_model``, the repository's is used (``cfg`` is changed in place)."""
    for node, name in ((cfg["predict"], "checkpoint"), (cfg["segment"]["agglomerate"], "edge_model"),
                       (cfg["synapses"], "partner_model")):
        path = node.get(name)
        if path and not Path(path).is_absolute() and not Path(path).exists() and (Path(repo_dir) / path).exists():
            node[name] = str(Path(repo_dir) / path)


def checkpoint_dir(cfg: dict, phantom_datasets: Sequence[str]) -> str:
    """The checkpoint folder the workflow predicts with: trained here (``train.enabled``) or the shipped one."""
    if not cfg["train"]["enabled"]:
        return cfg["predict"]["checkpoint"]
    return f"{cfg['results_dir']}/models/{train_dataset(cfg, phantom_datasets)}"


def train_dataset(cfg: dict, phantom_datasets: Sequence[str]) -> str:
    """``train.dataset``, else the first phantom dataset (ground truth is needed)."""
    name = cfg["train"]["dataset"] or next(iter(phantom_datasets), None)
    if name is None or name not in cfg["datasets"]:
        raise ValueError("train.enabled needs train.dataset (a dataset with ground truth) or a phantom dataset")
    return name


def train_ground_truth(cfg: dict, dataset: str, is_phantom: bool) -> tuple[list[str], str]:
    """(input files, CLI arguments) locating the training labels: a phantom's own ``gt/labels`` (none), else the
    dataset's entry in ``segment.evaluation.ground_truth`` (the same labels its segmentation is evaluated against),
    and its cleft masks in ``synapses.evaluation.ground_truth`` when it has them. Per-section (2D) labels train the
    in-plane affinities only (``--gt-per-section``: the z affinities get no target)."""
    if is_phantom:
        return [], ""
    gt = cfg["segment"]["evaluation"]["ground_truth"].get(dataset)
    if gt is None:
        raise ValueError(f"train.dataset {dataset!r} is not a phantom: give its ground-truth labels in "
                         f"segment.evaluation.ground_truth.{dataset} (path, key, format)")
    files = [gt["path"]]
    args = file_args(gt)
    if gt.get("per_section") or gt.get("format") in ("png-membrane", "png-boundary"):
        args += " --gt-per-section"
    clefts = cfg.get("synapses", {}).get("evaluation", {}).get("ground_truth", {}).get(dataset)
    if clefts:
        files.append(clefts["path"])
        args += " " + file_args(clefts, "clefts")
    return files, args + roi_offset_args(cfg["datasets"][dataset].get("roi"))


def context(cfg: dict, phantom_datasets: Sequence[str]) -> list[int]:
    """The network's halo (z, y, x voxels): from the checkpoint JSON, or from ``train.model`` when training here."""
    if cfg["train"]["enabled"]:
        from connectomix.models import architecture_from_params  # torch: imported only when training here

        return list(architecture_from_params(cfg["train"]["model"]).context)
    path = Path(checkpoint_dir(cfg, phantom_datasets)) / "checkpoint.json"
    if not path.exists():
        raise FileNotFoundError(f"predict.checkpoint: no checkpoint at {path.parent} (see models/README.md)")
    return list(json.loads(path.read_text())["context"])
