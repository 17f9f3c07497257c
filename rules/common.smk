# Shared helpers for all rules: the validated config, dataset shapes and the block grid.
import json
import shlex
from pathlib import Path

from connectomix import config as cmx_config
from connectomix.blocks import BlockGrid

CFG = cmx_config.validate(config, source="config")
REPO_DIR = Path(workflow.basedir)
# Relative paths in the config are relative to the working directory, except the shipped model, which is
# found in the repository when the working directory (--directory) has no copy of it.
_checkpoint = Path(CFG.get("predict", {}).get("checkpoint", ""))
if not _checkpoint.is_absolute() and not _checkpoint.exists() and (REPO_DIR / _checkpoint).exists():
    CFG["predict"]["checkpoint"] = str(REPO_DIR / _checkpoint)
RESULTS = CFG["results_dir"]
DATASETS = list(CFG["datasets"])
ENV = "../envs/connectomix.yaml"

# Final outputs per stage, registered by each stage's .smk as FINAL_TARGETS["stage"] = function(dataset) -> paths.
# The default target (all) requests them for every dataset.
FINAL_TARGETS = {}
# Per-stage metric files (results/{dataset}/eval/{stage}.json), registered the same way as
# EVAL_TARGETS["stage"] = function(dataset) -> paths; the metrics step merges them into eval/metrics.json.
EVAL_TARGETS = {}


def dataset_cfg(name):
    return CFG["datasets"][name]


def volume_path(name):
    return f"{RESULTS}/{name}/volume.zarr"


def is_phantom(name):
    return "phantom" in dataset_cfg(name)


_SHAPES = {}


def dataset_shape(name):
    """Volume shape (z, y, x) in voxels, known before any job runs (phantom params or the source's headers)."""
    if name not in _SHAPES:
        ds = dataset_cfg(name)
        if "phantom" in ds:
            from connectomix.phantom import PhantomParams

            shape = tuple(PhantomParams.from_dict(ds["phantom"]).shape)
        else:
            from connectomix.ingest import probe

            shape = tuple(ds["roi"]["shape"]) if "roi" in ds else tuple(probe(ds["source"]).shape)
        _SHAPES[name] = shape
    return _SHAPES[name]


def block_grid(name, halo=(0, 0, 0)):
    return BlockGrid(dataset_shape(name), CFG["blocks"]["shape"], halo, CFG["storage"]["chunk_shape"])


def voxels(name):
    z, y, x = dataset_shape(name)
    return z * y * x


def raw_volume_done(name):
    """The file that says `raw` (with its pyramid) is complete for a dataset."""
    if is_phantom(name):
        return f"{RESULTS}/{name}/gt/phantom.json"
    return f"{RESULTS}/{name}/ingest.json"


def roi_args(wc):
    """CLI arguments cropping a dataset to its configured ROI (empty when it has none)."""
    roi = dataset_cfg(wc.dataset).get("roi")
    return f"--roi-offset {zyx(roi['offset'])} --roi-shape {zyx(roi['shape'])}" if roi else ""


def dataset_dir(wc):
    return f"{RESULTS}/{wc.dataset}"


def volume_of(wc):
    return volume_path(wc.dataset)


def zyx(values):
    return " ".join(str(v) for v in values)


def json_arg(value):
    """A mapping as one shell-quoted JSON argument."""
    return shlex.quote(json.dumps(value, sort_keys=True))


PHANTOM_DATASETS = [name for name in DATASETS if is_phantom(name)] or ["__none__"]
SOURCE_DATASETS = [name for name in DATASETS if not is_phantom(name)] or ["__none__"]


def slab_resources(factor=8):
    """Resources for a job that streams a dataset slab by slab (memory bounded by one slab of sections)."""

    def _slab(wc):
        z, y, x = dataset_shape(wc.dataset)
        return factor * min(z, CFG["storage"]["chunk_shape"][0]) * y * x

    return {
        "mem_mb": lambda wc: cmx_config.job_resources(_slab(wc), CFG)["mem_mb"],
        "runtime": lambda wc: cmx_config.job_resources(voxels(wc.dataset), CFG)["runtime"],
    }
