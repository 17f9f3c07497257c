"""How far can a perfect agglomeration get on these fragments? The fragments' bound (every fragment given its
majority ground-truth object) in VOI and in ERL, for fragment settings other than the run's, on the run's own
affinities.

    python benchmarks/fragment_bound.py DATASET_DIR [--variants JSON]

DATASET_DIR is a finished workflow run with ground truth (``volume.zarr`` with ``affinities``, ``fragments`` and
``gt/labels``; ``gt/objects.parquet`` to keep neurons and axons as the ERL does). Each variant is a
``segment.fragments`` override (plus ``mode``: '2d' per section, '3d'), watershed over the whole volume. ERL counts a
segment holding skeleton vertices of two ground-truth objects as a merger (no correct cable), so a fragment that
swallows a thin neighbour in one section costs that neuron's whole run. Writes
results/fragment_bound.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from connectomix import config, io
from connectomix.evaluate.segmentation import contingency, majority_objects, voi
from connectomix.evaluate.skeletons import GroundTruthSkeletons
from connectomix.segment.agglomerate import apply_lut
from connectomix.segment.fragments import watershed_fragments
from connectomix.segment.params import fragment_mode

OUT = Path(__file__).resolve().parent / "results"
VARIANTS = [{"min_size": 10}, {"threshold": 0.4, "min_size": 10}, {"threshold": 0.3, "min_size": 10},
            {"threshold": 0.2, "min_size": 10}, {"threshold": 0.7, "min_size": 10},
            {"seed_window": [1, 3, 3], "min_size": 10}, {"seeds": "affinity", "min_size": 10},
            {"mode": "3d", "min_size": 10}]


def score(gt: np.ndarray, seg: np.ndarray, skeletons: GroundTruthSkeletons) -> dict:
    """VOI of a segmentation, its ERL and merger count along the ground-truth skeletons."""
    split, merge = voi(contingency(gt, seg))
    erl = skeletons.score(seg)
    return {"voi_split": split, "voi_merge": merge, "voi": split + merge, "erl_nm": erl["erl_nm"],
            "gt_erl_nm": erl["gt_erl_nm"], "mergers": erl["merges"]}


def bound(gt: np.ndarray, fragments: np.ndarray, skeletons: GroundTruthSkeletons) -> dict:
    """The fragments' bound: every fragment given its majority ground-truth object, scored by :func:`score`."""
    ids, objects = majority_objects(contingency(gt, fragments))
    known = objects > 0
    seg = apply_lut(fragments.astype(np.uint64), ids[known].astype(np.uint64), objects[known].astype(np.uint64))
    return {"fragments": int(len(np.unique(fragments)) - 1), **score(gt, seg, skeletons)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", default="results/phantom",
                        help="a finished run folder with ground truth (default results/phantom, after make demo)")
    parser.add_argument("--variants", help="JSON list of segment.fragments overrides (default: a sweep)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    dataset = Path(args.dataset)
    volume = dataset / "volume.zarr"
    for need in ("affinities", "fragments", "gt/labels"):
        if not (volume / need).exists():
            sys.exit(f"{volume / need} is missing: run the workflow on a dataset with ground truth first")
    setup = json.loads((dataset / "segment" / "setup.json").read_text())
    meta = io.read_meta(volume, "affinities")
    affs = np.asarray(io.open_array(volume, "affinities")[...])
    gt = np.asarray(io.open_array(volume, "gt/labels")[...])
    skeletons = GroundTruthSkeletons(volume, objects=dataset / "gt" / "objects.parquet")
    rows = [{"variant": "the run's fragments", "fragments_params": setup["params"]["fragments"],
             **bound(gt, np.asarray(io.open_array(volume, "fragments")[...]), skeletons)}]
    print(json.dumps(rows[-1]), flush=True)
    for variant in json.loads(args.variants) if args.variants else VARIANTS:
        variant = dict(variant)
        mode = variant.pop("mode", None)
        params = config.resolve("segment", {**setup["params"],
                                            "fragments": {**setup["params"]["fragments"], **variant}})
        mode = mode or fragment_mode(params, meta.voxel_size)
        fragments = watershed_fragments(affs, meta.attrs["offsets"], meta.voxel_size, params, mode)
        rows.append({"variant": json.dumps({"mode": mode, **variant}), "fragments_params": params["fragments"],
                     **bound(gt, fragments, skeletons)})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fragment_bound.json").write_text(json.dumps({"dataset": str(dataset), "rows": rows}, indent=1) + "\n")
    lines = ["# The fragments' bound (issue 28)", "",
             f"`python benchmarks/fragment_bound.py DATASET_DIR` on `{dataset}`: every fragment given its majority "
             "ground-truth object, i.e. what a perfect agglomeration of these fragments reaches. ERL of the ground "
             f"truth itself: {rows[0]['gt_erl_nm']:.0f} nm.", "",
             "| fragments | count | VOI split | VOI merge | VOI | ERL (nm) | mergers |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['fragments']} | {r['voi_split']:.3f} | {r['voi_merge']:.3f} | {r['voi']:.3f} "
              f"| {r['erl_nm']:.0f} | {r['mergers']} |" for r in rows]
    (out / "fragment_bound.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
