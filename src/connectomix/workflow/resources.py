"""Job resources (``mem_mb``, ``runtime`` in minutes) of every rule, from the voxels its jobs handle.

A rule's :class:`Cost` says which voxels (the dataset, one slab, a batch's or a block's read ROI with the stage's
halo) and how many times over; :func:`job_resources` turns voxels into requests through the config's `resources`
section, so requests scale with the block size, the halo and the dataset. The factors are estimates of the
arrays a job holds at once, except where a comment says what was measured.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Union

Factor = Union[float, Callable[[dict], float]]  # a number, or a function of the config


def job_resources(read_voxels: int, config: dict) -> dict:
    """mem_mb and runtime (minutes) for a job that reads ``read_voxels`` voxels, from the `resources` section."""
    res = config["resources"]
    mvox = read_voxels / 1e6
    return {
        "mem_mb": max(res["min_mem_mb"], int(res["mem_mb_per_mvoxel"] * mvox)),
        "runtime": max(res["min_runtime_min"], int(res["runtime_min_per_mvoxel"] * mvox + 0.999)),
    }


class Cost(NamedTuple):
    """How a rule's requests scale. ``mem`` multiplies the voxels of ``scope``: "volume" (the dataset), "slab"
    (one slab of storage-chunk sections: a job that streams the volume), "batch" (the largest block read ROI of
    the batch: blocks run one after another) or "block" (one block's read ROI), both with the ``halo`` of a stage
    (connectomix.workflow.Workflow.halo). ``time`` multiplies the voxels for the runtime: the batch's total read
    ROI for "batch", else the dataset. "fixed": ``mem`` is mem_mb and ``time`` minutes (jobs on tables);
    "minimal": the config's smallest requests (jobs on metadata or small tables)."""

    scope: str
    mem: Factor = 1
    time: Factor = 1
    halo: str | None = None
    min_runtime: int = 0


def _predict_passes(cfg: dict) -> int:
    from connectomix.predict import augment_variants

    return len(augment_variants(cfg["predict"]["augment"]))  # network passes per tile


MINIMAL = Cost("minimal")
# streaming a volume: one slab of sections (a storage chunk deep) of uint8/uint64 arrays and their pyramid levels
SLAB = Cost("slab", mem=8)
# streaming with tables beside the slab (segments, synapses, edges) and a second label array
SLAB_TABLES = Cost("slab", mem=16)

COSTS = {
    # the whole phantom at once: labels and clefts (uint64), raw and its float32 rendering fields
    "phantom": Cost("volume", mem=40),
    "ingest": SLAB,
    # the training volume, its labels and targets in memory, plus the network; training runs a fixed number of
    # iterations, whatever the volume, hence at least 30 minutes
    "train": Cost("volume", mem=30, min_runtime=30),
    # the transforms from one section pair at a time, then a sparse solve over every section's mesh nodes
    "align_setup": Cost("slab", mem=20, time=5),
    # the raw window behind the block and the float32 coordinates of its voxels
    "align_block": Cost("batch", mem=40),
    "align_finish": SLAB,
    "evaluate_align": SLAB,
    "predict_setup": MINIMAL,
    # measured: ~800 MB peak for a 40 x 284 x 284 read ROI (one tile per block, default model): 2 x the read voxels
    # per block; predict.batch_size blocks go through the network together; runtime x the passes per tile
    "predict_block": Cost("batch", mem=lambda cfg: 2 * cfg["predict"]["batch_size"], time=_predict_passes,
                          halo="predict"),
    "predict_finish": SLAB,
    "segment_setup": MINIMAL,
    # affinities (uint8, 3+ channels) and fragments of the read ROI
    "segment_fragments": Cost("batch", halo="segment"),
    "segment_rag": Cost("batch", halo="segment"),
    "segment_relabel": Cost("batch", halo="segment"),
    # the graph holds a few edges per fragment; fragments are a small fraction of the voxels
    "segment_agglomerate": Cost("volume", mem=0.25, time=0.25),
    "segment_finish": SLAB,
    # segmentation, ground truth and fragments (uint64) of the whole volume, and their contingency tables
    "evaluate_segmentation": Cost("volume", mem=40),
    "skeletonize_somata": MINIMAL,
    # kimimaro's distance transforms (float32) and labels (uint64) of the read ROI; tracing is slower than reading
    "skeletonize_block": Cost("batch", mem=12, time=4, halo="skeletonize"),
    "skeletonize_merge": Cost("volume"),
    "skeletonize_morphology": MINIMAL,
    # the segmentation and ground truth of the whole volume, skeletonized (kimimaro) once per label set
    "evaluate_skeletons": Cost("volume", mem=24, time=4),
    "mesh_setup": MINIMAL,
    # labels (uint64) of the read ROI, a padded copy, and the unsimplified pieces (measured: ~1.5 faces per voxel)
    "mesh_block": Cost("batch", mem=2, halo="mesh"),
    # every segment's unsimplified pieces at once (~40 bytes per voxel measured on the phantom), welded one by one
    "mesh_finish": Cost("volume"),
    # a few meshes drawn with matplotlib
    "mesh_figure": MINIMAL,
    "synapses_setup": MINIMAL,
    # 4 channels of uint8/float32 per read voxel, plus labels
    "synapses_block": Cost("batch", mem=24, halo="synapses"),
    # one block (+ partner halo) at a time: EDT indices dominate
    "synapses_stitch": Cost("block", mem=80, time=4, halo="synapses_partners"),
    "evaluate_synapses": SLAB_TABLES,
    # cleft masks and detected clefts of the whole volume (uint8 / uint64 label images)
    "evaluate_clefts": Cost("volume", mem=4),
    "connectome": SLAB_TABLES,
    "export_connectome": MINIMAL,
    "evaluate_connectome": SLAB_TABLES,
    # tables of somata and ROIs: the ILP assignment and RANSAC, not voxels
    "coregister": Cost("fixed", mem=2000, time=30),
    "evaluate_coregister": Cost("fixed", mem=2000, time=10),
    # tables and figures; the bootstraps and shuffles of like-to-like dominate the runtime
    "analysis": Cost("fixed", mem=4000, time=60),
    "evaluate_analysis": Cost("fixed", mem=4000, time=60),
    "export_precomputed_segmentation": SLAB,
    "export_skeletons": MINIMAL,
    # tables of synapses and neurons
    "export_annotations": MINIMAL,
    "export_neuroglancer_state": MINIMAL,
    "metrics": MINIMAL,
}


def rule_resources(wf, rule: str) -> dict:
    """``{"mem_mb": f, "runtime": f}`` of a rule, each a function of a job's wildcards (``dataset``, and ``batch``
    for batch jobs), for the rule's ``resources``."""
    cost = COSTS[rule]
    cfg = wf.cfg
    if cost.scope == "minimal":
        return {"mem_mb": cfg["resources"]["min_mem_mb"], "runtime": cfg["resources"]["min_runtime_min"]}
    if cost.scope == "fixed":
        return {"mem_mb": cost.mem, "runtime": cost.time}
    mem = cost.mem(cfg) if callable(cost.mem) else cost.mem
    time = cost.time(cfg) if callable(cost.time) else cost.time

    def mem_voxels(wc):
        if cost.scope == "volume":
            return wf.voxels(wc.dataset)
        if cost.scope == "slab":
            z, y, x = wf.shape(wc.dataset)
            return min(z, cfg["storage"]["chunk_shape"][0]) * y * x
        halo = wf.halo(cost.halo, wc.dataset)
        if cost.scope == "batch":
            return wf.batch_read_voxels(wc.dataset, wc.batch, halo)[0]
        return wf.grid(wc.dataset, halo).block((0, 0, 0)).read.size  # "block"

    def time_voxels(wc):
        if cost.scope == "batch":
            return wf.batch_read_voxels(wc.dataset, wc.batch, wf.halo(cost.halo, wc.dataset))[1]
        return wf.voxels(wc.dataset)

    return {
        "mem_mb": lambda wc: job_resources(mem * mem_voxels(wc), cfg)["mem_mb"],
        "runtime": lambda wc: max(cost.min_runtime, job_resources(time * time_voxels(wc), cfg)["runtime"]),
    }
