"""Meshing throughput: the blockwise mesh stage (one job per block, then the merge) vs zmesh on the whole volume
(same labels, same run), with faces and bytes per segment and the peak memory of each block job.

    python benchmarks/mesh_throughput.py                 # the demo phantom's gt/labels (48 x 320 x 320)
    python benchmarks/mesh_throughput.py --tile 1 2 2    # also the labels tiled 1 x 2 x 2 (fresh ids per copy)

Whole volume: one zmesh pass over the volume (closed at its faces), then every segment simplified like the merge
does. Blockwise: the labels written to an OME-Zarr, ``connectomix mesh setup``, one ``connectomix mesh block``
process per block (as the workflow's jobs; each block's marker records its seconds and peak memory), then
``finish`` (pieces welded, simplified, written as precomputed meshes). Both use the `mesh:` defaults of the config
schema and config.yaml's blocks. Agreement: the surface area of each segment's simplified mesh, blockwise vs whole.
Writes results/mesh_throughput.json and .md. Ratio = whole-volume time / blockwise time (>1: blockwise faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from connectomix import io
from connectomix.blockwise import grid_of, load_setup, read_markers
from connectomix.config import defaults
from connectomix.mesh import area, finish, mesh_labels, setup, simplify, weld
from connectomix.synthetic.skeletons import tiled_labels

HERE = Path(__file__).resolve().parent
VS = (40.0, 8.0, 8.0)
BLOCK = [24, 192, 192]  # config.yaml blocks.shape
CHUNK = [8, 64, 64]  # config.yaml storage.chunk_shape
PHANTOM = {"seed": 7}  # config.yaml datasets.phantom.phantom


def _phantom() -> np.ndarray:
    from connectomix.phantom import PhantomParams, generate

    return np.asarray(generate(PhantomParams.from_dict(PHANTOM), voxel_size=VS).labels)


def whole_volume(labels: np.ndarray, params: dict) -> tuple[dict, float]:
    """zmesh on the whole volume, every segment of at least min_segment_voxels simplified: ({label: (vertices,
    faces)}, seconds)."""
    start = time.perf_counter()
    ids, counts = np.unique(labels, return_counts=True)
    keep = {int(i) for i, c in zip(ids, counts) if i and c >= params["min_segment_voxels"]}
    out = {}
    for label, mesh in mesh_labels(labels, VS, (0, 0, 0), labels.shape).items():
        if label in keep:
            v, f = weld([mesh], VS)
            out[label] = simplify(v, f, VS, params["reduction_factor"], params["max_error_nm"])
    return out, time.perf_counter() - start


def blockwise(labels: np.ndarray, work: Path, block_shape) -> tuple[dict, dict]:
    """The mesh stage as the workflow runs it: ({label: (vertices, faces)} read back, timings and memory)."""
    from connectomix.mesh.precomputed import read_fragment

    root = work / "volume.zarr"
    io.write_full(root, "segmentation", labels, CHUNK, VS, is_label=True)
    setup(root, work / "mesh", {}, block_shape, CHUNK)
    s = load_setup(work / "mesh", "mesh")
    start = time.perf_counter()
    for block_id in grid_of(s).ids():
        subprocess.run([sys.executable, "-m", "connectomix", "mesh", "block", "--work-dir", str(work / "mesh"),
                        "--blocks", block_id], check=True, stdout=subprocess.DEVNULL)
    jobs_s = time.perf_counter() - start
    markers = read_markers(s, "mesh")
    start = time.perf_counter()
    summary = finish(work / "mesh", work / "meshes")
    finish_s = time.perf_counter() - start
    meshes, sizes = {}, []
    for path in (work / "meshes").glob("*:0:0"):
        meshes[int(path.name.split(":")[0])] = read_fragment(path.read_bytes())
        sizes.append(path.stat().st_size)
    block_s = sum(m["seconds"] for m in markers)
    return meshes, {
        "n_blocks": len(markers), "blocks_s": round(block_s, 2), "block_jobs_wall_s": round(jobs_s, 2),
        "merge_s": summary["merge_s"], "finish_s": round(finish_s, 2), "blockwise_s": round(block_s + finish_s, 2),
        "peak_rss_mb_per_block_job_max": round(max(m["peak_rss_mb"] for m in markers), 1),
        "peak_rss_mb_per_block_job_median": round(float(np.median([m["peak_rss_mb"] for m in markers])), 1),
        "unsimplified_faces_per_block_max": max(m["faces"] for m in markers),
        "bytes_per_segment_median": int(np.median(sizes)) if sizes else 0,
        "bytes_per_segment_max": int(max(sizes)) if sizes else 0, "bytes_total": int(sum(sizes)),
    }


def compare(labels: np.ndarray, block_shape, name: str) -> dict:
    params = defaults("mesh")
    whole, whole_s = whole_volume(labels, params)
    with tempfile.TemporaryDirectory(prefix="connectomix-mesh-bench-") as tmp:
        meshes, row = blockwise(labels, Path(tmp), block_shape)
    common = sorted(set(whole) & set(meshes))
    rel = np.array([area(*meshes[k]) / area(*whole[k]) - 1 for k in common])
    faces = np.array([len(meshes[k][1]) for k in common])
    return {
        "volume": name, "shape": list(labels.shape), "block_shape": list(block_shape),
        "segments": len(meshes), "segments_whole": len(whole), "segments_compared": len(common),
        "whole_s": round(whole_s, 2), **row, "throughput_ratio": round(whole_s / row["blockwise_s"], 3),
        "mvoxel_per_s_whole": round(labels.size / 1e6 / whole_s, 2),
        "mvoxel_per_s_blockwise": round(labels.size / 1e6 / row["blockwise_s"], 2),
        "faces_per_segment_median": int(np.median(faces)), "faces_per_segment_p95": int(np.percentile(faces, 95)),
        "faces_per_segment_max": int(faces.max()),
        "area_median_abs_rel_diff": round(float(np.median(np.abs(rel))), 5),
        "area_p95_abs_rel_diff": round(float(np.percentile(np.abs(rel), 95)), 5),
        "area_max_abs_rel_diff": round(float(np.abs(rel).max()), 5),
    }


COLUMNS = ["volume", "shape", "block_shape", "n_blocks", "segments", "whole_s", "blocks_s", "merge_s", "finish_s",
           "blockwise_s", "throughput_ratio", "mvoxel_per_s_whole", "mvoxel_per_s_blockwise",
           "peak_rss_mb_per_block_job_max", "faces_per_segment_median", "faces_per_segment_p95",
           "faces_per_segment_max", "bytes_per_segment_median", "bytes_per_segment_max", "bytes_total",
           "area_median_abs_rel_diff", "area_p95_abs_rel_diff", "area_max_abs_rel_diff"]


def markdown(out: dict) -> str:
    """The results table (``out``: what the JSON holds)."""
    md = ["# Mesh throughput: blockwise mesh stage vs zmesh on the whole volume", "",
          "Ratio = whole-volume time / blockwise time (blocks_s: the block jobs' own seconds from their markers, "
          "one process each, interpreter start-up excluded; finish: load, weld, simplify, write). Parameters: the "
          f"`mesh:` defaults {out['params']}; {out['cpus']} CPUs shared with other work. peak_rss_mb: the largest "
          "peak memory of one block job. Faces and bytes per segment: the simplified precomputed meshes. Area: "
          "each segment's simplified mesh, blockwise vs whole (unsimplified, they are identical: tests/test_mesh.py).",
          "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(str(r.get(c, "-")) for c in COLUMNS) + " |" for r in out["rows"]]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block", nargs=3, type=int, default=BLOCK, help="block shape (z y x), default config.yaml's")
    ap.add_argument("--tile", nargs=3, type=int, default=None, help="also the phantom tiled this many times")
    args = ap.parse_args(argv)
    import zmesh  # noqa: F401  (imported before the clocks start)

    labels = _phantom()
    rows = [compare(labels, args.block, "phantom gt/labels")]
    print(rows[-1], flush=True)
    if args.tile:
        rows.append(compare(tiled_labels(labels, args.tile), args.block, f"phantom gt/labels tiled {args.tile}"))
        print(rows[-1], flush=True)
    out = {"machine": platform.node(), "cpus": os.cpu_count(), "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
           "params": defaults("mesh"), "phantom": PHANTOM, "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "mesh_throughput.json").write_text(json.dumps(out, indent=1))
    (HERE / "results" / "mesh_throughput.md").write_text(markdown(out))
    print(markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
