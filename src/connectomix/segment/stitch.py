"""The blockwise flow: setup -> fragments (per block) -> RAG (per block) -> agglomerate (global) -> relabel (per
block) -> finish. Results do not depend on the block size beyond the fragments' block-face cuts, which the global
agglomeration merges (their contacts have high affinity).

Files under ``work_dir`` (``results/{dataset}/segment/``): ``setup.json``, ``edges/{block}.npz`` (block RAG
tables) and ``graph.npz`` (merged RAG), both with affinity histograms only for the quantile and learned methods,
``edge_model.json`` (method 'learned': the setup's copy of the edge classifier), ``merges.npz``
(nodes + merge history), ``lut.npz`` (fragment -> segment), ``lut_digests.json`` (per block, a digest of its
fragments' rows in the lookup table: the workflow reruns a block's relabel only when it changed),
``stats/{block}.parquet`` (per-block segment statistics). The block steps (``fragments``, ``rag``, ``relabel``) run
through :mod:`connectomix.blockwise` (:data:`STAGE`), which writes their markers last, to
``{marker_dir}/segment_{step}/{block}.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from connectomix import io, provenance
from connectomix.blocks import Block, Roi, atomic_write_json, atomic_write_parquet, block_id
from connectomix.blockwise import Stage, Step, grid_of, load_setup, new_setup, peak_rss_mb, pyramid_options
from connectomix.blockwise import option, read_markers, run_step, save_setup
from connectomix.segment.agglomerate import agglomerate as run_agglomeration
from connectomix.segment.agglomerate import apply_lut, lookup_table
from connectomix.segment.edges import EdgeModel
from connectomix.segment.fragments import LOCAL_BITS, NN_OFFSETS, block_fragments, block_of_fragment, nn_channels
from connectomix.segment.params import fragment_mode, resolve
from connectomix.segment.rag import Rag, block_rag, contract, majority_pairs, merge_rags

AFFINITIES = "affinities"
FRAGMENTS = "fragments"
SEGMENTATION = "segmentation"
EDGE_MODEL = "edge_model.json"


def affinities_weights(attrs: dict) -> str | None:
    """The sha256 of the U-Net weights that predicted an affinities array (its provenance), if recorded."""
    return (attrs.get("provenance") or {}).get("config", {}).get("weights_sha256")


def setup(volume, work_dir, params: dict | None, block_shape, chunk_shape=None, marker_dir=None) -> dict:
    """Create the empty ``fragments`` and ``segmentation`` arrays and write ``setup.json`` (resolved parameters,
    block grid, fragment mode, affinity offsets). Returns the setup record.

    Arrays that exist with the same layout and a shape no larger than the affinities' are kept (resized in place
    when the dataset grew: ``io.ensure_array``), so blocks done before keep their output."""
    work_dir = Path(work_dir)
    params = resolve(params)
    meta = io.read_meta(volume, AFFINITIES)
    offsets = [list(map(int, o)) for o in meta.attrs.get("offsets", NN_OFFSETS)]
    nn_channels(offsets)  # fail early if the nearest-neighbour channels are missing
    shape = meta.spatial_shape
    chunks = tuple(chunk_shape or meta.spatial_chunks)
    edge_model = _install_edge_model(params, work_dir, affinities_weights(meta.attrs))
    record = new_setup("segment", volume, work_dir, shape=shape, block_shape=block_shape, chunk_shape=chunks,
                       halo=params["halo"], voxel_size=meta.voxel_size, offset_nm=meta.offset_nm, params=params,
                       provenance=provenance.record(params), marker_dir=marker_dir,
                       mode=fragment_mode(params, meta.voxel_size), offsets=offsets, edge_model=edge_model)
    record["arrays"] = {
        name: io.ensure_array(volume, name, shape, np.uint64, chunks, meta.voxel_size, meta.offset_nm,
                              is_label=True,
                              attrs={"provenance": record["provenance"], provenance.DIGEST_ATTR: None})[1]
        for name in (FRAGMENTS, SEGMENTATION)
    }
    for sub in ("edges", "stats"):
        (work_dir / sub).mkdir(parents=True, exist_ok=True)
    return save_setup(record)


def _read_affs(volume, roi: Roi, channels=None) -> np.ndarray:
    arr = io.open_array(volume, AFFINITIES)
    sl = (slice(None),) + roi.slices
    data = np.asarray(arr[sl])
    return data if channels is None else np.ascontiguousarray(data[channels])


def fragments_read_roi(block: Block, mode: str, method: str) -> Roi:
    """The ROI a block's fragments are computed on: its read ROI, but only the write ROI's sections for per-section
    watershed fragments ('2d' mode), which look at no other section (their labels in the write ROI are the same
    either way; mutex fragments are not: their small-fragment filter merges across sections)."""
    if mode != "2d" or method != "watershed":
        return block.read
    z0, z1 = block.write.offset[0], block.write.end[0]
    return Roi((z0,) + block.read.offset[1:], (z1 - z0,) + block.read.shape[1:])


def fragments_block(s: dict, block: Block, context=None) -> dict:
    """Watershed fragments of one block: read ROI in, write ROI out (ids unique by block)."""
    read = fragments_read_roi(block, s["mode"], s["params"]["fragments"]["method"])
    affs = _read_affs(s["volume"], read)
    labels, count, views = block_fragments(affs, s["offsets"], s["voxel_size"], s["params"], s["mode"],
                                           block.write.relative_to(read), block.index)
    io.open_array(s["volume"], FRAGMENTS, mode="r+")[block.write.slices] = labels
    faces = Path(s["work_dir"]) / "faces" / f"{block.id}.npz"
    faces.parent.mkdir(parents=True, exist_ok=True)
    tmp = faces.with_suffix(".tmp.npz")
    np.savez(tmp, **views)
    tmp.replace(faces)
    return {"fragments": count, "sha256": {FRAGMENTS: provenance.data_digest(labels)}}


def _rag_roi(block: Block) -> tuple[Roi, tuple[int, int, int]]:
    """The write ROI grown by one voxel on each low side that is inside the volume, and that growth (0 or 1)."""
    pad = tuple(1 if o > 0 else 0 for o in block.write.offset)
    roi = Roi(tuple(o - p for o, p in zip(block.write.offset, pad)),
              tuple(s + p for s, p in zip(block.write.shape, pad)))
    return roi, pad  # type: ignore[return-value]


def _face_pairs(s: dict, block: Block, frags: np.ndarray, pad) -> tuple[np.ndarray, np.ndarray]:
    """Fragment pairs cut apart by this block's lower faces, from both blocks' views across the face."""
    grid = grid_of(s)
    work_dir = s["work_dir"]
    us, vs = [], []
    with np.load(Path(work_dir) / "faces" / f"{block.id}.npz") as own_views:
        own_views = dict(own_views)
    for d in range(3):
        if not pad[d]:
            continue
        index = list(block.index)
        index[d] -= 1
        lower = grid.block(index)
        with np.load(Path(work_dir) / "faces" / f"{lower.id}.npz") as f:
            lower_view = f[f"up{d}"] if f"up{d}" in f else None
        first = [slice(p, None) for p in pad]
        first[d] = pad[d]
        last = [slice(p, None) for p in pad]
        last[d] = 0
        if lower_view is not None:  # the lower block's labelling of our first plane
            a, b = majority_pairs(frags[tuple(first)], lower_view)
            us.append(a), vs.append(b)
        if f"down{d}" in own_views:  # our labelling of the lower block's last plane
            a, b = majority_pairs(frags[tuple(last)], own_views[f"down{d}"])
            us.append(a), vs.append(b)
    if not us:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    return np.concatenate(us).astype(np.uint64), np.concatenate(vs).astype(np.uint64)


def rag_block(s: dict, block: Block, context=None) -> dict:
    """RAG edges owned by one block (its voxels' nearest-neighbour affinities, face contacts to the lower
    neighbours included); needs the fragments of this block and of its lower face neighbours."""
    roi, pad = _rag_roi(block)
    frags = np.asarray(io.open_array(s["volume"], FRAGMENTS)[roi.slices])
    affs = _read_affs(s["volume"], block.write, nn_channels(s["offsets"]))
    rag = block_rag(frags, affs, pad, histograms=_reads_histograms(s["params"]))
    rag.same_u, rag.same_v = _face_pairs(s, block, frags, pad)
    path = Path(s["work_dir"]) / "edges" / f"{block.id}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    rag.to_npz(tmp)
    tmp.replace(path)
    return {"edges": len(rag), "edge_file": str(path)}


def agglomerate(work_dir) -> dict:
    """Merge every block's RAG into one graph, agglomerate it globally and write the lookup table."""
    start = time.perf_counter()
    work_dir = Path(work_dir)
    s = load_setup(work_dir, "segment")
    grid = grid_of(s)
    missing = [b for b in grid.ids() if not (work_dir / "edges" / f"{b}.npz").exists()]
    if missing:
        raise FileNotFoundError(f"RAG tables missing for {len(missing)} block(s), e.g. {missing[0]}: run "
                                "`connectomix segment block --step rag` on them")
    rag = merge_rags([Rag.from_npz(work_dir / "edges" / f"{b}.npz") for b in grid.ids()],
                     histograms=_reads_histograms(s["params"]))
    rag.to_npz(work_dir / "graph.npz")
    nodes, merges = agglomerate_graph(rag, s["params"], edge_model=stage_edge_model(work_dir))
    np.savez(work_dir / "merges.npz", nodes=nodes, merges=merges)
    fragments, segments = lookup_table(nodes, merges)
    np.savez(work_dir / "lut.npz", fragments=fragments, segments=segments)
    atomic_write_json(work_dir / "lut_digests.json", lut_digests(fragments, segments))
    summary = {"nodes": int(len(nodes)), "edges": int(len(rag)), "merges": int(len(merges)),
               "segments_in_graph": int(len(nodes) - len(fragments)),
               "face_joins": int(len(rag.same_u)), "seconds": time.perf_counter() - start,
               "peak_rss_mb": peak_rss_mb(), "method": s["params"]["agglomerate"]["method"],
               "threshold": s["params"]["agglomerate"]["threshold"]}
    atomic_write_json(work_dir / "agglomerate.json", summary)
    return summary


def lut_digests(fragments: np.ndarray, segments: np.ndarray) -> dict:
    """Per block id, a digest of the lookup-table rows of the fragments that block made (blocks with no row are
    left out: all their fragments are their own segments). A block's relabel output follows from its fragments
    and these rows, so the workflow reruns relabel only for blocks whose digest changed (e.g. after the dataset
    grew, blocks whose segments now reach into the new blocks)."""
    fragments = np.asarray(fragments, np.uint64)
    segments = np.asarray(segments, np.uint64)
    if not len(fragments):
        return {}
    keys = fragments >> np.uint64(LOCAL_BITS)
    order = np.argsort(keys, kind="stable")  # fragments are sorted, so each block's rows stay sorted
    keys, fragments, segments = keys[order], fragments[order], segments[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    out = {}
    for a, b in zip(starts.tolist(), ends.tolist()):
        index = block_of_fragment(fragments[a:a + 1])[0]
        digest = hashlib.sha256(fragments[a:b].tobytes())
        digest.update(segments[a:b].tobytes())
        out[block_id(index)] = digest.hexdigest()[:32]
    return out


def agglomerate_graph(rag: Rag, params: dict, threshold: float | None = None,
                      edge_model: EdgeModel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Join face-cut fragments (``rag.same_*``, merge score -1), then agglomerate the contracted graph with the
    configured method (``threshold`` overrides the configured one; ``edge_model`` scores edges for 'learned').
    Returns (nodes, merges) over fragment ids."""
    if threshold is not None:
        params = {**params, "agglomerate": {**params["agglomerate"], "threshold": threshold}}
    nodes, forced, graph = join_face_cuts(rag, histograms=_reads_histograms(params))
    _, merges = run_agglomeration(graph, params, edge_model)
    return nodes, np.concatenate([forced, merges])


def join_face_cuts(rag: Rag, histograms: bool = True) -> tuple[np.ndarray, np.ndarray, Rag]:
    """Join the fragments a block face cut in two (``rag.same_*``). Returns the sorted fragment ids of the graph,
    the joins as merges (score -1) and the graph contracted by them (each joined group under its lowest id)."""
    nodes = np.unique(np.concatenate([rag.u, rag.v, rag.same_u, rag.same_v]))
    forced = np.zeros(len(rag.same_u), dtype=[("a", np.uint64), ("b", np.uint64), ("score", np.float64)])
    forced["a"], forced["b"], forced["score"] = rag.same_u, rag.same_v, -1.0
    source, target = lookup_table(nodes, forced)
    return nodes, forced, contract(rag, source, target, histograms=histograms)


def _reads_histograms(params: dict) -> bool:
    """Whether the configured agglomeration reads the RAG's affinity histograms (``quantile`` and ``learned``)."""
    return params["agglomerate"]["method"] in ("quantile", "learned")


def stage_edge_model(work_dir) -> EdgeModel | None:
    """The edge model the setup copied into the stage folder (method 'learned'), else None."""
    path = Path(work_dir) / EDGE_MODEL
    return EdgeModel.load(path) if path.exists() else None


def _install_edge_model(params: dict, work_dir: Path, affinities_sha: str | None) -> dict | None:
    """For method 'learned': check the configured edge model (readable, trained on affinities of the U-Net that
    made these) and copy it into the stage folder; returns what the setup records about it."""
    copy = work_dir / EDGE_MODEL
    if params["agglomerate"]["method"] != "learned":
        copy.unlink(missing_ok=True)
        return None
    path = params["agglomerate"]["edge_model"]
    if not path:
        raise ValueError("segment.agglomerate.method 'learned' needs segment.agglomerate.edge_model: the path of "
                         "a model written by `connectomix segment train-edges`")
    model = EdgeModel.load(path)
    trained_on = model.record.get("training", {}).get("affinities_weights_sha256")
    if trained_on and affinities_sha and affinities_sha not in trained_on:
        raise ValueError(f"edge model {path} was trained on affinities of the U-Net with weights "
                         f"{', '.join(s[:12] for s in trained_on)}, but these come from {affinities_sha[:12]}: "
                         "retrain it on this U-Net's affinities (segment train-edges) or use method 'mean'")
    work_dir.mkdir(parents=True, exist_ok=True)
    sha = model.save(copy)
    return {"path": str(path), "sha256": sha}


def load_lut(work_dir) -> tuple[np.ndarray, np.ndarray]:
    """The fragment -> segment table written by ``agglomerate``."""
    with np.load(Path(work_dir) / "lut.npz") as f:
        return f["fragments"], f["segments"]


def segment_stats(seg: np.ndarray, offset) -> "object":
    """Per-segment partial statistics of one block (id, voxels, coordinate sums, bounding box in global voxels)."""
    import fastremap
    import pandas as pd
    from scipy import ndimage

    columns = ["id", "voxels", "sum_z", "sum_y", "sum_x", "start_z", "start_y", "start_x", "stop_z", "stop_y",
               "stop_x"]
    renum, mapping = fastremap.renumber(np.ascontiguousarray(seg), preserve_zero=True, in_place=False)
    inverse = {v: k for k, v in mapping.items()}
    n = int(renum.max())
    if n == 0:
        return pd.DataFrame({c: np.zeros(0, np.uint64 if c == "id" else np.int64) for c in columns})
    flat = renum.ravel().astype(np.int64)
    counts = np.bincount(flat, minlength=n + 1)[1:]
    sums = []
    for axis in range(3):
        coord = np.broadcast_to(
            np.arange(seg.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)]) + offset[axis], seg.shape)
        sums.append(np.bincount(flat, weights=coord.ravel().astype(np.float64), minlength=n + 1)[1:])
    boxes = ndimage.find_objects(renum.astype(np.int64))
    start = np.array([[sl[a].start + offset[a] for a in range(3)] for sl in boxes], np.int64)
    stop = np.array([[sl[a].stop + offset[a] for a in range(3)] for sl in boxes], np.int64)
    ids = np.array([inverse[i] for i in range(1, n + 1)], np.uint64)
    return pd.DataFrame({
        "id": ids, "voxels": counts.astype(np.int64), "sum_z": sums[0], "sum_y": sums[1], "sum_x": sums[2],
        "start_z": start[:, 0], "start_y": start[:, 1], "start_x": start[:, 2],
        "stop_z": stop[:, 0], "stop_y": stop[:, 1], "stop_x": stop[:, 2],
    })


def relabel_block(s: dict, block: Block, lut) -> dict:
    """Write one block of ``segmentation`` (fragments through the lookup table ``lut``, :func:`load_lut`) and its
    segment statistics."""
    frags = np.asarray(io.open_array(s["volume"], FRAGMENTS)[block.write.slices])
    fragments, segments = lut
    seg = apply_lut(frags, fragments, segments)
    io.open_array(s["volume"], SEGMENTATION, mode="r+")[block.write.slices] = seg
    stats = segment_stats(seg, block.write.offset)
    atomic_write_parquet(stats, Path(s["work_dir"]) / "stats" / f"{block.id}.parquet")
    return {"segments": int(len(stats)), "sha256": {SEGMENTATION: provenance.data_digest(seg)}}


def segments_table(work_dir) -> "object":
    """``segments.parquet`` rows from the per-block statistics: id, voxels, bounding box (voxels, stop exclusive,
    and nm) and centroid (nm; voxel (0, 0, 0) sits at ``offset_nm``)."""
    import pandas as pd

    s = load_setup(work_dir, "segment")
    parts = [pd.read_parquet(Path(work_dir) / "stats" / f"{b}.parquet") for b in grid_of(s).ids()]
    df = pd.concat(parts, ignore_index=True)
    agg = df.groupby("id", sort=True).agg(
        voxels=("voxels", "sum"), sum_z=("sum_z", "sum"), sum_y=("sum_y", "sum"), sum_x=("sum_x", "sum"),
        start_z=("start_z", "min"), start_y=("start_y", "min"), start_x=("start_x", "min"),
        stop_z=("stop_z", "max"), stop_y=("stop_y", "max"), stop_x=("stop_x", "max"),
    ).reset_index()
    vs, off = s["voxel_size"], s["offset_nm"]
    out = pd.DataFrame({"id": agg["id"].astype(np.uint64), "voxels": agg["voxels"].astype(np.int64)})
    for a, axis in enumerate("zyx"):
        out[f"bbox_start_{axis}"] = agg[f"start_{axis}"].astype(np.int64)
        out[f"bbox_stop_{axis}"] = agg[f"stop_{axis}"].astype(np.int64)
    for a, axis in enumerate("zyx"):
        out[f"bbox_start_{axis}_nm"] = off[a] + agg[f"start_{axis}"] * vs[a]
        out[f"bbox_stop_{axis}_nm"] = off[a] + agg[f"stop_{axis}"] * vs[a]
    for a, axis in enumerate("zyx"):
        out[f"centroid_{axis}_nm"] = off[a] + agg[f"sum_{axis}"] / agg["voxels"] * vs[a]
    return out


def finish(work_dir, segments, summary=None, pyramid_levels: int = 1, pyramid_factor=(1, 2, 2)) -> dict:
    """Write ``segments.parquet`` (atomically), the segmentation pyramid and the stage summary JSON."""
    s = load_setup(work_dir, "segment")
    grid = grid_of(s)
    markers = read_markers(s, "relabel")
    table = segments_table(work_dir)
    digest = provenance.blocks_digest(io.open_array(s["volume"], SEGMENTATION), markers, SEGMENTATION)
    provenance.set_array_digest(s["volume"], SEGMENTATION, digest)
    # inputs are recorded here, not at setup: the affinities are complete (and checksummed) only now
    prov = provenance.record(s["params"], {"affinities": provenance.array_digest(s["volume"], AFFINITIES)})
    io.update_attrs(s["volume"], SEGMENTATION, provenance=prov)
    atomic_write_parquet(table, segments)
    levels = io.build_pyramid(s["volume"], SEGMENTATION, pyramid_levels, pyramid_factor) if pyramid_levels > 1 else 1
    agg_path = Path(work_dir) / "agglomerate.json"
    out = {
        "segments": int(len(table)),
        "voxels": int(table["voxels"].sum()),
        "largest_segment_voxels": int(table["voxels"].max()) if len(table) else 0,
        "blocks": len(grid),
        "pyramid_levels": levels,
        "mode": s["mode"],
        "agglomerate": json.loads(agg_path.read_text()) if agg_path.exists() else {},
        "segments_parquet": str(segments),
        "segmentation_sha256": digest,
        "provenance": prov,
    }
    io.update_attrs(s["volume"], SEGMENTATION, segments=int(len(table)), stable_ids="lowest fragment id")
    if summary:
        atomic_write_json(summary, out)
    return out


def _load_lut(s: dict, options: dict):
    return load_lut(s["work_dir"])


STAGE = Stage("segment", setup, (Step("fragments", fragments_block), Step("rag", rag_block),
                                 Step("relabel", relabel_block, _load_lut)), finish,
              finish_options=(option("--segments", required=True, help="segments.parquet to write"),
                              *pyramid_options(1)))


def segment_volume(volume, work_dir, params: dict | None, block_shape, chunk_shape=None, segments_out=None,
                   summary_out=None, pyramid_levels: int = 1, pyramid_factor=(1, 2, 2), workers: int = 1) -> dict:
    """Run the whole blockwise flow in this process (tests, benchmarks, small volumes) through the same runner as
    the workflow's jobs: the block steps block after block, or as ``workers`` batch jobs on a process pool, then
    the global steps."""
    work_dir = Path(work_dir)
    setup(volume, work_dir, params, block_shape, chunk_shape)
    timings = {}
    for step in ("fragments", "rag", "agglomerate", "relabel"):
        t = time.perf_counter()
        if step == "agglomerate":
            agg = agglomerate(work_dir)
        else:
            run_step(STAGE, work_dir, step, workers=workers)
        timings[step] = time.perf_counter() - t
    t = time.perf_counter()
    summary = finish(work_dir, segments_out or work_dir / "segments.parquet", summary_out, pyramid_levels,
                     pyramid_factor)
    timings["finish"] = time.perf_counter() - t
    summary["timings"] = timings
    summary["agglomerate"] = agg
    return summary
