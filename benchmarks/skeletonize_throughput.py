"""Throughput of blockwise kimimaro + merge vs plain kimimaro on the whole volume (same labels, same run).

    python benchmarks/skeletonize_throughput.py                  # phantom and large (256 x 512 x 512), two block shapes
    python benchmarks/skeletonize_throughput.py --large 128 512 512 --workers 2 --halos

Volumes: the phantom of `make demo` (config.yaml: seed 7, 48 x 320 x 320, its gt/labels); the large volume tiles
those labels with fresh ids per copy (thousands of labels), and is run with config.yaml's blocks and with larger
ones (``--large-blocks``): the halo's share of the work shrinks as blocks grow. Parameters: the `skeletonize:`
defaults (soma detection thresholds for real somata: the phantom's are never detected) and the `blocks.shape` of
config.yaml; one row also with config.yaml's `skeletonize:` section (somata detected at phantom scale), which is
what `make demo` runs. Both methods get the same number of processes (kimimaro ``parallel`` vs a pool over blocks)
and the same post-processing (soma collapse, joins, tree, ticks, smoothing: ``connectomix.skeletonize.merge.finalize``),
so they differ only by the blocking. Segments compared: those of at least ``min_segment_voxels`` voxels (the
blockwise merge drops smaller ones).
Writes results/skeletonize_throughput.json and .md. Ratio = whole-volume time / blockwise time (>1: faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import yaml

from connectomix.config import defaults
from connectomix.skeletonize import core
from connectomix.skeletonize.params import resolve
from connectomix.synthetic.skeletons import tiled_labels

HERE = Path(__file__).resolve().parent
VS = (40.0, 8.0, 8.0)
BLOCK = [24, 192, 192]  # config.yaml blocks.shape
PHANTOM = {"seed": 7}  # config.yaml datasets.phantom.phantom


def _phantom():
    from connectomix.phantom import PhantomParams, generate

    ph = generate(PhantomParams.from_dict(PHANTOM), voxel_size=VS)
    kind = {int(i): k for i, k in zip(ph.objects["id"], ph.objects["kind"])}
    return np.asarray(ph.labels), kind


def compare(labels, block_shape, workers, params=None, kind=None, repeat=1):
    """Time both methods (alternating, ``repeat`` times each, the fastest run of each counts: the CPUs are shared);
    per-segment cable agreement over the segments of at least min_segment_voxels."""
    params = dict(params or {})
    t_whole = t_block = float("inf")
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        whole = core.skeletonize_whole(labels, VS, params, parallel=workers)
        t_w = time.perf_counter() - t0
        t_whole = min(t_whole, t_w)
        t0 = time.perf_counter()
        t = {}
        blockwise = core.skeletonize_blockwise(labels, VS, block_shape, params, parallel=workers, timings=t)
        t_b = time.perf_counter() - t0
        if t_b < t_block:
            t_block, timings = t_b, t
        runs.append([round(t_w, 2), round(t_b, 2)])
    row = {
        "shape": list(labels.shape), "labels": int(labels_count(labels)), "block_shape": list(block_shape),
        "halo": list(resolve(params)["halo"]), "workers": workers,
        "whole_s": round(t_whole, 2), "blockwise_s": round(t_block, 2), "runs_whole_blockwise_s": runs,
        "blocks_s": round(timings["blocks_s"], 2), "merge_s": round(timings["merge_s"], 2),
        "n_blocks": timings["n_blocks"], "read_per_write_voxel": _read_per_write(labels.shape, block_shape, params),
        "throughput_ratio": round(t_whole / t_block, 3),
        "mvoxel_per_s_whole": round(labels.size / 1e6 / t_whole, 3),
        "mvoxel_per_s_blockwise": round(labels.size / 1e6 / t_block, 3),
        **agreement(labels, whole, blockwise, params, kind),
    }
    return row


def _read_per_write(shape, block_shape, params) -> float:
    """Voxels read per voxel owned, over the grid's blocks (the halo's overhead; read ROIs are clipped to the
    volume)."""
    from connectomix.blocks import BlockGrid

    grid = BlockGrid(shape, block_shape, resolve(params)["halo"])
    read = sum(int(np.prod(b.read.shape)) for b in grid)
    return round(read / int(np.prod(shape)), 2)


def labels_count(labels) -> int:
    import fastremap

    ids = fastremap.unique(labels)
    return len(ids) - int(ids[0] == 0)


def agreement(labels, whole, other, params, kind=None) -> dict:
    """Per-segment cable agreement of ``other`` with ``whole`` over the segments of at least min_segment_voxels."""
    import fastremap

    ids, counts = fastremap.unique(labels, return_counts=True)
    min_voxels = int(resolve(params)["min_segment_voxels"])
    big = {int(i) for i, c in zip(ids, counts) if i != 0 and c >= min_voxels}
    whole = {k: s for k, s in whole.items() if k in big}
    other = {k: s for k, s in other.items() if k in big}
    common = sorted(set(whole) & set(other))
    rel = np.array([other[k].cable_length() / max(whole[k].cable_length(), 1e-9) - 1 for k in common])
    cable_w = sum(whole[k].cable_length() for k in common)
    cable_b = sum(other[k].cable_length() for k in common)
    worst = common[int(np.argmax(np.abs(rel)))] if len(rel) else None
    row = {
        "segments_compared": len(common), "only_whole": len(set(whole) - set(other)),
        "only_blockwise": len(set(other) - set(whole)),
        "total_cable_rel_diff": round(cable_b / cable_w - 1, 4) if cable_w else None,
        "segments_within_3pct": round(float(np.mean(np.abs(rel) < 0.03)), 3) if len(rel) else None,
        "median_abs_rel_diff": round(float(np.median(np.abs(rel))), 4) if len(rel) else None,
        "p95_abs_rel_diff": round(float(np.percentile(np.abs(rel), 95)), 4) if len(rel) else None,
        "worst_rel_diff": round(float(rel[common.index(worst)]), 4) if worst is not None else None,
        "worst_segment": f"{worst} ({kind.get(worst, '?')})" if worst is not None and kind else worst,
        "segments_one_tree": round(float(np.mean([other[k].is_tree() for k in common])), 3) if common else None,
        # a segment whose labels are pieces farther apart than join_distance_nm is a forest both ways
        "segments_more_components_than_whole": int(sum(other[k].n_components() > whole[k].n_components()
                                                       for k in common)),
    }
    if kind and len(rel):
        row["within_3pct_by_kind"] = {
            k: round(float(np.mean([abs(r) < 0.03 for s, r in zip(common, rel) if kind.get(s) == k])), 3)
            for k in sorted({kind.get(s, "?") for s in common})
        }
    return row


def view_reference(labels, workers, kind=None) -> list[dict]:
    """kimimaro's own dependence on the view: the whole volume against itself flipped in y and x, and with y and
    x transposed. No blocking is involved, so this is the floor any blockwise agreement
    with one whole-volume run can reach."""
    whole = core.skeletonize_whole(labels, VS, {}, parallel=workers)
    rows = []
    # cable lengths do not change under these isometries (y and x voxels are equal), so vertices stay as they are
    for name, view in (("flipped in y and x", labels[:, ::-1, ::-1]), ("y and x transposed", labels.transpose(0, 2, 1))):
        other = core.skeletonize_whole(np.ascontiguousarray(view), VS, {}, parallel=workers)
        rows.append({"volume": f"reference: whole volume vs itself {name} (no blocks)", "shape": list(labels.shape),
                     "labels": labels_count(labels), "halo": "-", "n_blocks": "-", "workers": workers,
                     "whole_s": "-", "blockwise_s": "-", "merge_s": "-", "throughput_ratio": "-",
                     **agreement(labels, whole, other, {}, kind)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", nargs=3, type=int, default=[256, 512, 512], help="large volume shape (z y x)")
    ap.add_argument("--block", nargs=3, type=int, default=BLOCK, help="block shape (z y x), default config.yaml's")
    ap.add_argument("--workers", type=int, default=2, help="processes for both methods (default 2)")
    ap.add_argument("--halos", nargs="*", default=None, metavar="Z,Y,X",
                    help="extra phantom rows with these halos (bare --halos: 2,16,16 and 8,64,64)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each method, alternating (default 2)")
    ap.add_argument("--large-blocks", nargs="*", default=["48,256,256"], metavar="Z,Y,X",
                    help="extra large-volume rows with these block shapes (default 48,256,256: blocks sized for a "
                         "volume this large; config.yaml's are sized for the 48 x 320 x 320 demo)")
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args(argv)
    import kimimaro  # noqa: F401  (imported before the clocks start: the first method would pay for it)

    rows = []
    labels, kind = _phantom()
    rows.append({"volume": "phantom gt/labels", **compare(labels, args.block, args.workers, kind=kind,
                                                             repeat=args.repeat)})
    print(rows[-1], flush=True)
    demo = yaml.safe_load((HERE.parent / "config.yaml").read_text())["skeletonize"]
    rows.append({"volume": "phantom gt/labels, config.yaml skeletonize (make demo)",
                 **compare(labels, args.block, args.workers, demo, kind=kind, repeat=args.repeat)})
    print(rows[-1], flush=True)
    rows += view_reference(labels, args.workers, kind)
    print(rows[-2:], flush=True)
    halos = [] if args.halos is None else (args.halos or ["2,16,16", "8,64,64"])
    for h in halos:
        halo = [int(v) for v in h.split(",")]
        rows.append({"volume": f"phantom gt/labels, halo {halo}",
                     **compare(labels, args.block, args.workers, {"halo": halo}, kind=kind, repeat=args.repeat)})
        print(rows[-1], flush=True)
    if not args.skip_large:
        reps = [-(-s // t) for s, t in zip(args.large, labels.shape)]
        large = tiled_labels(labels, reps)[tuple(slice(0, s) for s in args.large)]
        span = int(labels.max()) + 1
        large_kind = {int(i): kind.get(int(i) % span, "?") for i in np.unique(large) if i}
        rows.append({"volume": "large: tiled phantom gt/labels",
                     **compare(large, args.block, args.workers, kind=large_kind, repeat=args.repeat)})
        print(rows[-1], flush=True)
        for b in args.large_blocks:
            block = [int(v) for v in b.split(",")]
            rows.append({"volume": f"large: tiled phantom gt/labels, blocks {block}",
                         **compare(large, block, args.workers, kind=large_kind, repeat=args.repeat)})
            print(rows[-1], flush=True)
    out = {"machine": platform.node(), "cpus": os.cpu_count(), "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
           "params": defaults("skeletonize"), "phantom": PHANTOM, "block": list(args.block), "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "skeletonize_throughput.json").write_text(json.dumps(out, indent=1))
    (HERE / "results" / "skeletonize_throughput.md").write_text(markdown(out, args.workers, args.repeat))
    print(markdown(out, args.workers, args.repeat))
    return 0


def markdown(out: dict, workers: int, repeat: int) -> str:
    """The results table (``out``: what the JSON holds)."""
    rows = out["rows"]
    cols = ["volume", "shape", "labels", "block_shape", "halo", "read_per_write_voxel", "n_blocks", "workers",
            "whole_s", "blockwise_s", "merge_s", "throughput_ratio", "segments_compared", "total_cable_rel_diff",
            "segments_within_3pct", "median_abs_rel_diff", "p95_abs_rel_diff", "worst_rel_diff", "worst_segment",
            "segments_one_tree", "segments_more_components_than_whole"]
    md = ["# Skeletonize throughput: blockwise + merge vs whole-volume kimimaro", "",
          "Ratio = whole-volume time / blockwise time (goal >= 0.8). Cable agreement per segment (relative "
          "difference of blockwise-merged vs whole-volume cable), over segments of at least min_segment_voxels; "
          "both post-processed alike (soma, joins, tree, ticks, smoothing). Default skeletonize parameters "
          f"unless the row names config.yaml; blocks {out['block']} (config.yaml's) unless the row names others; "
          "read_per_write_voxel: voxels read per voxel owned, over the blocks (the halo's cost); "
          f"{workers} processes for each method; {out['cpus']} CPUs, shared with other "
          f"work, so each time is the fastest of {repeat} alternating runs.", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |" for r in rows]
    kinds = [r for r in rows if "within_3pct_by_kind" in r]
    if kinds:
        md += ["", "Segments within 3 % by kind: " + "; ".join(
            f"{r['volume']}: " + ", ".join(f"{k} {v}" for k, v in r["within_3pct_by_kind"].items()) for r in kinds)]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
