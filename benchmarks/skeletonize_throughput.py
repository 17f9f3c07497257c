"""Throughput of blockwise kimimaro + merge vs plain kimimaro on the whole volume (same labels, same run).

    python benchmarks/skeletonize_throughput.py                 # small + large (256 x 512 x 512)
    python benchmarks/skeletonize_throughput.py --large 64 256 256 --workers 2

Volumes: the phantom's gt/labels when connectomix.phantom exists (small phantom), else synthetic neurons
(connectomix.skeletonize.synthetic); the large volume tiles a synthetic block with fresh ids per copy (thousands
of labels). Both methods get the same number of processes (kimimaro ``parallel`` vs a pool over blocks).
Writes results/skeletonize_throughput.json and .md. Ratio = whole-volume time / blockwise time (>1: faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from connectomix.skeletonize import core
from connectomix.skeletonize.synthetic import synthetic_neurons, tiled_labels

HERE = Path(__file__).resolve().parent
VS = (40.0, 8.0, 8.0)
PARAMS = {
    "halo": [4, 24, 24],
    "teasar": {"const": 150, "soma_invalidation_const": 150, "soma_detection_threshold": 120,
               "soma_acceptance_threshold": 150},
    "min_segment_voxels": 500,
}


def _phantom_labels():
    try:
        from connectomix.phantom import PhantomParams, generate
    except ImportError:
        return None
    result = generate(PhantomParams.from_dict({"seed": 1}), voxel_size=VS)
    return np.asarray(result.labels)


def compare(labels, block_shape, workers):
    """Time both methods; per-segment cable agreement over segments both produced."""
    t0 = time.perf_counter()
    whole = core.skeletonize_whole(labels, VS, PARAMS, parallel=workers)
    t_whole = time.perf_counter() - t0
    timings = {}
    t0 = time.perf_counter()
    blockwise = core.skeletonize_blockwise(labels, VS, block_shape, PARAMS, parallel=workers, timings=timings)
    t_block = time.perf_counter() - t0
    common = sorted(set(whole) & set(blockwise))
    rel = np.array([blockwise[k].cable_length() / max(whole[k].cable_length(), 1e-9) - 1 for k in common])
    cable_w = sum(whole[k].cable_length() for k in common)
    cable_b = sum(blockwise[k].cable_length() for k in common)
    return {
        "shape": list(labels.shape), "labels": int(len(np.unique(labels)) - 1), "block_shape": list(block_shape),
        "workers": workers, "whole_s": round(t_whole, 2), "blockwise_s": round(t_block, 2),
        "blocks_s": round(timings["blocks_s"], 2), "merge_s": round(timings["merge_s"], 2),
        "throughput_ratio": round(t_whole / t_block, 3),
        "mvoxel_per_s_blockwise": round(labels.size / 1e6 / t_block, 3),
        "segments_compared": len(common), "only_whole": len(set(whole) - set(blockwise)),
        "only_blockwise": len(set(blockwise) - set(whole)),
        "total_cable_rel_diff": round(cable_b / cable_w - 1, 4) if cable_w else None,
        "segments_within_3pct": round(float(np.mean(np.abs(rel) < 0.03)), 3) if len(rel) else None,
        "median_abs_rel_diff": round(float(np.median(np.abs(rel))), 4) if len(rel) else None,
        "segments_one_tree": round(float(np.mean([blockwise[k].is_tree() for k in common])), 3) if common else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", nargs=3, type=int, default=[256, 512, 512], help="large volume shape (z y x)")
    ap.add_argument("--block", nargs=3, type=int, default=[32, 128, 128], help="block shape (z y x)")
    ap.add_argument("--workers", type=int, default=2, help="processes for both methods (default 2)")
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    phantom = _phantom_labels()
    if phantom is not None:
        rows.append({"volume": "phantom gt/labels", **compare(phantom, args.block, args.workers)})
    else:
        small, _ = synthetic_neurons((64, 256, 256), VS, n_neurons=12, seed=0, soma_radius_nm=(60, 70),
                                     neurite_radius_nm=(40, 70), branches=1)
        rows.append({"volume": "synthetic neurons (no phantom yet)", **compare(small, args.block, args.workers)})
    if not args.skip_large:
        tile, _ = synthetic_neurons((64, 128, 128), VS, n_neurons=8, seed=1, soma_radius_nm=(60, 70),
                                    neurite_radius_nm=(40, 70), branches=1)
        reps = [-(-s // t) for s, t in zip(args.large, tile.shape)]
        large = tiled_labels(tile, reps)[tuple(slice(0, s) for s in args.large)]
        rows.append({"volume": "large: tiled synthetic neurons", **compare(large, args.block, args.workers)})
    out = {"machine": platform.node(), "cpus": __import__("os").cpu_count(), "params": PARAMS, "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "skeletonize_throughput.json").write_text(json.dumps(out, indent=1))
    cols = ["volume", "shape", "labels", "workers", "whole_s", "blockwise_s", "merge_s", "throughput_ratio",
            "total_cable_rel_diff", "segments_within_3pct", "median_abs_rel_diff", "segments_one_tree"]
    md = ["# Skeletonize throughput: blockwise + merge vs whole-volume kimimaro", "",
          "Ratio = whole-volume time / blockwise time (goal >= 0.8). Cable agreement per segment, both "
          "post-processed alike (join, tree, ticks).", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    (HERE / "results" / "skeletonize_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
