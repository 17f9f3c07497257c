"""Where the like-to-like validation is lost: the workflow on one phantom as it runs, and again with its
segmentation replaced by the phantom's ground-truth labels, everything downstream recomputed by the workflow
(somata, skeletons, synapses and their partners, connectome, co-registration, cell types, like-to-like).

One command: ``python benchmarks/like_to_like_stages.py [--seeds 7 9]`` -> benchmarks/results/
like_to_like_stages.{json,md}. For each seed the workflow runs on config.yaml (seed replaced; results in a
temporary folder), or ``--datasets DIR ...`` reuses finished runs of config.yaml (a dataset folder such as
``results/phantom``; its seed is read from ``gt/phantom.json``). The copy with ground-truth labels keeps the
upstream outputs (volume, predictions, segment work folder) and the workflow may rerun only the rules after the
segmentation (``--allowed-rules``), so the EM, the network's maps and the synapse detection are the same.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from synapse_partners import run_workflow  # the workflow on config.yaml with one phantom seed

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results"
# what the copy keeps: the EM, the maps and the segment stage's outputs (the segmentation itself is replaced)
UPSTREAM = ("volume.zarr", "gt", "predict", "predict.json", "segment", "segment.json", "segments.parquet",
            "blocks/predict", "blocks/segment_fragments", "blocks/segment_rag", "blocks/segment_relabel",
            "eval/segmentation.json", "eval/segmentation_sweep.png")
NOT_RERUN = ("phantom", "ingest", "train", "predict_", "segment_", "evaluate_segmentation")


def _downstream_rules() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "snakemake", "--list-rules"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    return [r for r in out if not r.startswith(NOT_RERUN)]


def with_gt_segmentation(dataset: Path, seed: int, work: Path) -> Path:
    """A copy of ``dataset``'s upstream outputs with ``segmentation`` (every level) set to ``gt/labels`` and
    ``segments.parquet`` rebuilt from it; the workflow then reruns everything after the segmentation."""
    import zarr

    from connectomix.blockwise import grid_of, load_setup
    from connectomix.segment.stitch import segment_stats, segments_table

    copy = work / "results" / "phantom"
    shutil.rmtree(work / "results", ignore_errors=True)
    for name in UPSTREAM:
        source = dataset / name
        if source.is_dir():
            shutil.copytree(source, copy / name)
        elif source.exists():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    group = zarr.open_group(str(copy / "volume.zarr"), mode="r+")
    for level in group["segmentation"].array_keys():
        group["segmentation"][level][...] = group["gt/labels"][level][...]
    labels = np.asarray(group["segmentation"]["0"])
    setup = load_setup(copy / "segment")
    for block in grid_of(setup):  # the per-block statistics segments.parquet is built from
        segment_stats(labels[block.write.slices], block.write.offset).to_parquet(
            copy / "segment" / "stats" / f"{block.id}.parquet")
    segments_table(copy / "segment").to_parquet(copy / "segments.parquet")
    run_workflow(seed, work, "--allowed-rules", *_downstream_rules())
    return copy


def summary(dataset: Path) -> dict:
    """The figures of ``eval/metrics.json`` this comparison reports."""
    m = json.loads((dataset / "eval" / "metrics.json").read_text())
    keys = ("segmentation.voi", "skeletons.erl_nm", "synapses.f1", "synapses.partner_accuracy",
            "coregister.n_neurons_identified", "coregister.accuracy", "celltypes.accuracy", "connectome.n_pred_edges",
            "connectome.n_true_edges", "connectome.n_gt_edges", "connectome.edge_precision",
            "connectome.edge_recall", "like_to_like.n_connected_pairs", "like_to_like.gt_n_connected_pairs",
            "like_to_like.slope", "like_to_like.ci_low", "like_to_like.ci_high", "like_to_like.p_value",
            "like_to_like.gt_slope", "like_to_like.gt_ci_low", "like_to_like.gt_ci_high",
            "like_to_like.within_gt_ci", "like_to_like.relative_slope", "like_to_like.relative_ci_low",
            "like_to_like.relative_ci_high", "like_to_like.gt_relative_slope", "like_to_like.gt_relative_ci_low",
            "like_to_like.gt_relative_ci_high", "like_to_like.relative_within_gt_ci", "like_to_like.null_flat")
    return {k: m.get(k) for k in keys}


def _seed_of(dataset: Path) -> int:
    return int(json.loads((dataset / "gt" / "phantom.json").read_text())["params"]["seed"])


def _f(value, spec=".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else format(value, spec)


def _slope(m: dict, prefix: str, kind: str = "") -> str:
    key = f"like_to_like.{prefix}{kind}"
    return (f"{_f(m.get(key + 'slope'), '.3f')} [{_f(m.get(key + 'ci_low'), '.3f')}, "
            f"{_f(m.get(key + 'ci_high'), '.3f')}]")


def table(rows: list[dict]) -> list[str]:
    lines = ["| seed | segmentation | VOI | ERL nm | synapse F1 | partner acc. | neurons found (ROIs matched right) "
             "| cell types | edges: found / true / GT | like-to-like pairs (GT) | slope [95 % CI] | GT slope [95 % CI] "
             "| in GT CI | p | relative slope | GT relative slope | in GT CI |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        voi = "0 (ground truth)" if r["segmentation"] == "ground truth" else _f(m["segmentation.voi"])
        lines.append(
            f"| {r['seed']} | {r['segmentation']} | {voi} | {_f(m['skeletons.erl_nm'], '.0f')} | "
            f"{_f(m['synapses.f1'])} | {_f(m['synapses.partner_accuracy'])} | {m['coregister.n_neurons_identified']} "
            f"({_f(m['coregister.accuracy'])}) | {_f(m['celltypes.accuracy'])} | {m['connectome.n_pred_edges']} / "
            f"{m['connectome.n_true_edges']} / {m['connectome.n_gt_edges']} | {m['like_to_like.n_connected_pairs']} "
            f"({m['like_to_like.gt_n_connected_pairs']}) | {_slope(m, '')} | {_slope(m, 'gt_')} | "
            f"{'yes' if m['like_to_like.within_gt_ci'] else 'no'} | {_f(m['like_to_like.p_value'], '.3f')} | "
            f"{_slope(m, '', 'relative_')} | {_slope(m, 'gt_', 'relative_')} | "
            f"{'yes' if m['like_to_like.relative_within_gt_ci'] else 'no'} |")
    return lines


def aggregate(rows: list[dict]) -> list[str]:
    """One line per segmentation: how often the slopes fall in the ground-truth run's CI, and their ratio to it."""
    lines = []
    for name in ("reconstructed", "ground truth"):
        ms = [r["metrics"] for r in rows if r["segmentation"] == name]
        if not ms:
            continue
        within = sum(bool(m["like_to_like.within_gt_ci"]) for m in ms)
        relative = sum(bool(m["like_to_like.relative_within_gt_ci"]) for m in ms)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.nanmedian([m["like_to_like.slope"] / m["like_to_like.gt_slope"] for m in ms])
            rel = [m["like_to_like.relative_slope"] / m["like_to_like.gt_relative_slope"] for m in ms]
        rel = np.nanmedian(rel) if np.isfinite(rel).any() else float("nan")
        pairs = [m["like_to_like.n_connected_pairs"] for m in ms]
        lines.append(f"- {name} segmentation, {len(ms)} phantom(s): slope in the GT CI {within}, relative slope "
                     f"{relative}; median slope / GT slope {_f(ratio)}, relative {_f(rel)}; connected pairs among "
                     f"the matched neurons {min(pairs)}-{max(pairs)}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 9])
    parser.add_argument("--datasets", nargs="+", help="finished runs of config.yaml to reuse instead of --seeds")
    parser.add_argument("--work", help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cmx_l2l_") as tmp:
        tmp = args.work or tmp
        runs = ([(_seed_of(Path(d)), Path(d)) for d in args.datasets] if args.datasets
                else [(s, None) for s in args.seeds])
        for seed, dataset in runs:
            dataset = dataset or run_workflow(seed, Path(tmp) / f"seed{seed}")
            gt = with_gt_segmentation(dataset, seed, Path(tmp) / f"seed{seed}_gt")
            rows.append({"seed": seed, "segmentation": "reconstructed", "metrics": summary(dataset)})
            rows.append({"seed": seed, "segmentation": "ground truth", "metrics": summary(gt)})
            rows[-1]["metrics"]["segmentation.voi"] = 0.0  # its eval/segmentation.json is the copied one
            print(json.dumps(rows[-2:]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "like_to_like_stages.json").write_text(json.dumps({"rows": rows}, indent=1))
    seeds = sorted({r["seed"] for r in rows})
    command = (f"--datasets DIR ...` on finished runs of config.yaml (seeds {', '.join(map(str, seeds))})"
               if args.datasets else f"--seeds {' '.join(map(str, seeds))}`")
    lines = ["# Like-to-like from the phantom's EM: the reconstructed segmentation vs the ground-truth one\n",
             f"`python benchmarks/like_to_like_stages.py {command}. "
             "The workflow on config.yaml for each phantom seed, then "
             "again from the same EM, maps and synapse detection with the segmentation replaced by the phantom's "
             "labels (every later stage recomputed: somata, skeletons, synapse partners, connectome, "
             "co-registration, cell types, like-to-like). The GT slope is the same analysis on the true connectome "
             "with the true ROI partners; the relative slope divides a slope by the mean connection probability. "
             "Seed 7 is the demo, seed 9 chose the operating points.\n",
             *table(rows), "", *aggregate(rows)]
    (out / "like_to_like_stages.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
