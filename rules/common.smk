# Shared helpers for all rules: the validated config, dataset shapes and the block grid.
import hashlib
import json
import shlex
from pathlib import Path

from connectomix import config as cmx_config
from connectomix.blocks import BlockBatches, BlockGrid, batch_shape_for, parse_batch_id

# The one validation of the config: against the schema, defaults filled; an error is one line naming the key path.
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


_GRIDS = {}


def block_grid(name, halo=(0, 0, 0)):
    """The dataset's block grid with a stage's halo, built once per (dataset, halo): input functions and resource
    callables ask for it once per job, and planning time matters at 10^4+ blocks (benchmarks/plan_scale.py)."""
    key = (name, tuple(halo))
    grid = _GRIDS.get(key)
    if grid is None:
        grid = _GRIDS[key] = BlockGrid(
            dataset_shape(name), CFG["blocks"]["shape"], halo, CFG["storage"]["chunk_shape"]
        )
    return grid


# Blockwise steps run one job per batch: a brick of blocks (blocks.per_job, "auto" by default: at most
# blocks.max_jobs jobs per step). Snakemake spends a few ms planning each job, so 10^4-10^5 single-block jobs per
# step would take minutes to plan (benchmarks/results/plan_scale.md). The CLIs still work on, and write a marker
# for, every block; each batch job also writes blocks/{stage}/batches/{batch}.json, which the rules track.
_BATCHES = {}


def block_batches(name):
    if name not in _BATCHES:
        grid = block_grid(name)
        shape = batch_shape_for(grid.grid_shape, CFG["blocks"]["per_job"], CFG["blocks"]["max_jobs"])
        _BATCHES[name] = BlockBatches(grid.grid_shape, shape)
    return _BATCHES[name]


_BATCH_BLOCKS = {}


def _batch_blocks(name, batch):
    key = (name, batch)
    if key not in _BATCH_BLOCKS:
        _BATCH_BLOCKS[key] = block_batches(name).blocks(batch)
    return _BATCH_BLOCKS[key]


def batch_blocks(wc):
    """The block ids of a batch job, as CLI arguments."""
    return " ".join(_batch_blocks(wc.dataset, wc.batch))


def batch_record(wc):
    """The batch marker's content (shell-quoted JSON), written after the stage's CLI succeeded."""
    return json_arg({"batch": wc.batch, "blocks": _batch_blocks(wc.dataset, wc.batch)})


def batch_markers(stage):
    """Input function: every batch marker of a blockwise stage (for the step that gathers it)."""
    return lambda wc: [
        f"{RESULTS}/{wc.dataset}/blocks/{stage}/batches/{b}.json" for b in block_batches(wc.dataset).ids()
    ]


# Extending a dataset (a larger ROI, or a source that gained data; + directions only). The block grid is anchored
# at the volume's origin, so old blocks keep their ids and ROIs; ingest and the setup steps keep their arrays
# (resized in place); fragment ids follow each fragment's first voxel, so unchanged segments keep their ids.
# Block rules name what defines their result as params and inputs:
#   * dataset_identity: what every block depends on besides its ROI;
#   * batch_roi: the batch's read ROI with the stage's halo plus one voxel (it changes for blocks next to new ones);
#   * the batch markers of the previous blockwise stage whose blocks it reads (batches_meeting);
#   * the stage's config.
# The setup steps (they create the arrays, and resize them when the dataset grew) are checkpoints, and block
# rules take their marker through setup_of(): ancient, so a rerun setup does not rerun every block. Snakemake
# 9.27 skips, for the rest of that invocation, every job behind an ancient input whose producer reruns, even
# new jobs with missing outputs (snakemake issue #4166); behind a checkpoint the DAG is rebuilt once the setup
# ran, so the new blocks and the blocks whose params changed do run. The dry run cannot know that before the
# setups ran and lists every block behind a setup that will rerun; `snakemake --until predict_setup
# segment_setup synapses_setup` first gives the exact plan. Everything a setup rerun could change for a block
# must therefore be in the block's params or non-ancient inputs (dataset_identity, the stage config, the ROI).
# A setup records what defines a block's result in {stage}/setup.json (connectomix.blockwise), which the block
# jobs read: the setup rule takes it as params too, so that a change reruns the setup before the blocks.
# Batch ids are stable when the grid grows only with a fixed blocks.per_job (with "auto" the brick may change).


def setup_of(checkpoint):
    """Input function: a stage's setup marker (a checkpoint's output), ancient (see "Extending a dataset")."""
    return lambda wc: ancient(getattr(checkpoints, checkpoint).get(dataset=wc.dataset).output[0])


def synapses_halo(wc):
    """The halo (voxels) of the synapses block jobs of a dataset (it depends on the voxel size)."""
    from connectomix.synapses import cleft_halo, resolve

    return cleft_halo(resolve(CFG["synapses"]), dataset_cfg(wc.dataset)["voxel_size"])


def dataset_identity(wc):
    """Param: the dataset's config (for a source dataset without roi.shape: the ROI may grow), the storage chunks
    and the block shape, as JSON."""
    ds = json.loads(json.dumps(dataset_cfg(wc.dataset)))
    if "roi" in ds and not is_phantom(wc.dataset):
        ds["roi"] = {"offset": ds["roi"]["offset"]}
    return json.dumps({"dataset": ds, "chunks": CFG["storage"]["chunk_shape"], "block_shape": CFG["blocks"]["shape"]},
                      sort_keys=True)


def batch_roi(halo=(0, 0, 0)):
    """Param function: the read ROI (offset + shape) of a batch's blocks with `halo` + 1 voxel per axis. With the
    batch id and the block shape it fixes each block's write and read ROI, and it changes for the blocks that
    border new blocks when the dataset grows."""
    grown = tuple(int(h) + 1 for h in halo)

    def _roi(wc):
        roi = block_grid(wc.dataset, grown).brick_read_roi(*parse_batch_id(wc.batch))
        return f"{zyx(roi.offset)} + {zyx(roi.shape)}"

    return _roi


def batches_meeting(stage, halo=(0, 0, 0)):
    """Input function: the batch markers of blockwise `stage` holding a block whose write ROI meets the read ROI
    (with `halo`) of this batch: the outputs of `stage` that this batch reads."""

    def _markers(wc):
        grid = block_grid(wc.dataset, halo)
        first, last = grid.blocks_meeting(grid.brick_read_roi(*parse_batch_id(wc.batch)))
        return [
            f"{RESULTS}/{wc.dataset}/blocks/{stage}/batches/{b}.json"
            for b in block_batches(wc.dataset).covering(first, last)
        ]

    return _markers


def check_growth(name):
    """A source dataset ingested before may only grow (connectomix.ingest.check_extension): fail before any job
    runs when its ROI shrank."""
    if is_phantom(name):
        return
    from connectomix.ingest import check_extension, previous_ingest

    ds = dataset_cfg(name)
    offset = ds["roi"]["offset"] if "roi" in ds else (0, 0, 0)
    try:
        check_extension(previous_ingest(volume_path(name)), ds["source"], offset, dataset_shape(name))
    except ValueError as error:
        raise ValueError(f"dataset {name}: {error}") from None


_CACHED = {}


def _load_cached(path, load):
    """``load(path)``, read again only when the file changed (size, mtime): digest params are asked for once per
    job, and planning time matters at 10^4+ blocks; None when the file does not exist (yet)."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _CACHED.get(str(path))
    if cached is None or cached[0] != key:
        cached = _CACHED[str(path)] = (key, load(path))
    return cached[1]


def somata_digest(wc):
    """Param of skeletonize_block: a digest of the somata (skeletonize/somata.parquet, a checkpoint's output)
    whose cleared sphere reaches the batch's read ROI; once the checkpoint ran, the blocks whose somata changed
    rerun (a soma far away does not touch a block)."""
    import pandas as pd

    from connectomix.skeletonize.soma import somata_meeting

    somata = _load_cached(f"{RESULTS}/{wc.dataset}/skeletonize/somata.parquet", pd.read_parquet)
    if somata is None:
        return "none"
    roi = block_grid(wc.dataset, CFG["skeletonize"]["halo"]).brick_read_roi(*parse_batch_id(wc.batch))
    rows = somata_meeting(somata, roi.offset, roi.shape, dataset_cfg(wc.dataset)["voxel_size"])
    return hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()[:32]


def lut_digest(wc):
    """Param of segment_relabel: a digest of the lookup-table rows of its blocks' fragments, from
    segment/lut_digests.json. segment_agglomerate (a checkpoint) writes that file; once it ran, Snakemake re-plans
    the relabel jobs and reruns those whose digest changed (and those whose fragments were recomputed)."""
    digests = _load_cached(f"{RESULTS}/{wc.dataset}/segment/lut_digests.json", lambda p: json.loads(p.read_text()))
    if digests is None:
        return "none"
    digest = hashlib.sha256()
    for block in _batch_blocks(wc.dataset, wc.batch):
        digest.update(f"{block}:{digests.get(block, '')};".encode())
    return digest.hexdigest()[:32]


_READ_VOXELS = {}


def batch_read_voxels(wc, halo=(0, 0, 0)):
    """(largest, total) read-ROI voxels over the blocks of a batch: blocks run one after another, so memory
    follows the largest and runtime the total."""
    key = (wc.dataset, tuple(halo), wc.batch)
    if key not in _READ_VOXELS:
        _READ_VOXELS[key] = block_grid(wc.dataset, halo).read_voxels(*parse_batch_id(wc.batch))
    return _READ_VOXELS[key]


def batch_resources(halo=(0, 0, 0), mem_factor=1, time_factor=1):
    """mem_mb from the batch's largest block read ROI x mem_factor, runtime from its total x time_factor."""
    return {
        "mem_mb": lambda wc: cmx_config.job_resources(mem_factor * batch_read_voxels(wc, halo)[0], CFG)["mem_mb"],
        "runtime": lambda wc: cmx_config.job_resources(time_factor * batch_read_voxels(wc, halo)[1], CFG)["runtime"],
    }


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


for _name in DATASETS:
    check_growth(_name)
