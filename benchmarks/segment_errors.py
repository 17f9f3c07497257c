"""Where a segmentation's errors come from: its agglomeration rerun with ground-truth decisions on one kind of
region-graph edge at a time (in-plane contacts, contacts between sections, both), on the same fragments and graph.

One command, after ``make demo``: ``python benchmarks/segment_errors.py [DATASET_DIR ...]`` (default
``results/phantom``) -> benchmarks/results/segment_errors.{json,md}. A dataset folder needs ``volume.zarr`` with
``fragments`` and ``gt/labels``, and ``segment/graph.npz`` (kept by the workflow).

An edge's ground-truth decision: merge when the two regions' majority ground-truth objects (by voxel overlap) are
the same, else keep apart; edges touching a region whose majority is unlabelled (0, not evaluated) keep their
affinity score. An edge is a z edge when most of its contacts lie between sections. Every variant runs the same
mean-affinity agglomeration (``segment.agglomerate``), with the oracle's edges scored 1 (merge) or 0 (apart).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from connectomix import io
from connectomix.evaluate.segmentation import contingency, fragment_bound, majority_of, threshold_sweep, voi
from connectomix.segment.agglomerate import apply_lut, hierarchical, lookup_table
from connectomix.segment.rag import Rag, _no_histograms
from connectomix.segment.stitch import join_face_cuts

OUT = Path(__file__).resolve().parent / "results"
THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]
VARIANTS = ("affinities", "oracle in-plane edges", "oracle z edges", "oracle all edges")


def graph_truth(volume: Path, work: Path):
    """The finished run's region graph as the workflow joins it, with ground truth per edge: (fragments, gt,
    nodes, forced merges, graph, regions, is_z per edge, (majority object of u, of v) per edge)."""
    fragments = np.asarray(io.open_array(volume, "fragments")[...])
    gt = np.asarray(io.open_array(volume, "gt/labels")[...])
    nodes, forced, graph = join_face_cuts(Rag.from_npz(work / "graph.npz"), histograms=False)
    regions = apply_lut(fragments, *lookup_table(nodes, forced))
    if not graph.has_count_z():
        sys.exit(f"{work / 'graph.npz'} has no contact counts between sections (count_z): rerun the segmentation")
    is_z = graph.count_z > graph.count / 2
    table = contingency(gt, regions)
    owners = (majority_of(table, graph.u), majority_of(table, graph.v))
    return fragments, gt, nodes, forced, graph, regions, is_z, owners


def oracle_merges(graph: Rag, oracle: np.ndarray, truth: np.ndarray, threshold: float) -> np.ndarray:
    """The mean-affinity merge history up to ``threshold`` with the ``oracle`` edges scored by ``truth`` (1: same
    object, 0: apart) instead of their affinities."""
    score = np.where(oracle, truth, graph.mean)
    total = score * 255.0 * graph.count.astype(np.float64)
    return hierarchical(Rag(graph.u, graph.v, graph.count, total, *_no_histograms()), threshold)[1]


def _label(dataset: Path) -> str:
    """A phantom's seed (from its gt/phantom.json), else the folder."""
    record = dataset / "gt" / "phantom.json"
    if record.exists():
        return f"phantom seed {json.loads(record.read_text())['params']['seed']}"
    return str(dataset)


def analyse(dataset: Path) -> dict:
    """The four agglomerations of one finished dataset folder; VOI rows per variant."""
    volume, work = dataset / "volume.zarr", dataset / "segment"
    for need in (volume / "fragments", volume / "gt" / "labels", work / "graph.npz", work / "setup.json"):
        if not need.exists():
            sys.exit(f"{need} is missing: run the workflow (make demo) on a dataset with ground truth first")
    setup = json.loads((work / "setup.json").read_text())
    threshold = float(setup["params"]["agglomerate"]["threshold"])
    fragments, gt, nodes, forced, graph, regions, is_z, (ou, ov) = graph_truth(volume, work)
    known = (ou > 0) & (ov > 0)
    truth = (ou == ov).astype(np.float64)
    base = contingency(gt, fragments)
    split, merge = voi(fragment_bound(base))
    out = {"dataset": _label(dataset), "threshold": threshold, "edges": int(len(graph)), "z_edges": int(is_z.sum()),
           "fragment_bound": {"voi_split": split, "voi_merge": merge, "voi": split + merge}, "variants": {}}
    for name in VARIANTS:
        oracle = {"affinities": np.zeros(len(graph), bool), "oracle in-plane edges": known & ~is_z,
                  "oracle z edges": known & is_z, "oracle all edges": known}[name]
        merges = oracle_merges(graph, oracle, truth, max(THRESHOLDS) + 1e-9)
        rows = threshold_sweep(gt, fragments, nodes, np.concatenate([forced, merges]), THRESHOLDS, base=base)
        at = min(rows, key=lambda r: abs(r["threshold"] - threshold))
        best = min(rows, key=lambda r: r["voi"])
        out["variants"][name] = {"at_threshold": at, "best": best, "oracle_edges": int(oracle.sum())}
        print(dataset.name, name, f"VOI {at['voi']:.3f} at {threshold}, best {best['voi']:.3f} at "
              f"{best['threshold']}", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", default=["results/phantom"], help="finished dataset folders")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    results = [analyse(Path(d)) for d in args.datasets]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "segment_errors.json").write_text(json.dumps(results, indent=1))
    lines = ["# Where the segmentation errors come from (VOI in bits; lower is better)\n",
             "`python benchmarks/segment_errors.py [DATASET_DIR ...]` after `make demo`. The same fragments and "
             "region graph, agglomerated by mean affinity with ground-truth decisions on one kind of edge at a time "
             "(see the script's docstring). Fragment bound: every fragment joined to its majority ground-truth "
             "object.\n",
             "| dataset | edges (z) | variant | oracle edges | VOI at the run's threshold (split / merge) | "
             "best threshold | best VOI (split / merge) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for name, v in r["variants"].items():
            a, b = v["at_threshold"], v["best"]
            lines.append(f"| {r['dataset']} | {r['edges']} ({r['z_edges']}) | {name} | {v['oracle_edges']} | "
                         f"{a['voi']:.3f} ({a['voi_split']:.3f} / {a['voi_merge']:.3f}) at {r['threshold']} | "
                         f"{b['threshold']} | {b['voi']:.3f} ({b['voi_split']:.3f} / {b['voi_merge']:.3f}) |")
        fb = r["fragment_bound"]
        lines.append(f"| {r['dataset']} | | fragment bound | - | {fb['voi']:.3f} ({fb['voi_split']:.3f} / "
                     f"{fb['voi_merge']:.3f}) | - | - |")
    (out / "segment_errors.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
