"""Does a model keep neurons whole? The ablation table of the continuity campaign (issue 28): each model end to end
on phantoms it never saw, scored on what a connectome needs.

    python benchmarks/continuity.py --model shipped=models/phantom --model ctx=PATH [--seeds 7 10 11 12]

Each (model, seed) runs the whole workflow on config.yaml with that phantom seed and `predict.checkpoint` set to
the model (results under --work, kept for reruns: a finished run is not recomputed). Per run: segmentation VOI
split / merge, ERL, the agglomeration's decisions on region-graph edges between sections (z) and within them
(in-plane) as F1 of "same object" against ground truth, neuron-to-neuron edge F1, connected pairs among the
matched neurons, whether the like-to-like relative slope lies in the ground-truth run's CI; per model: training
time, inference FLOPs per output voxel and predict Mvoxel/s (from the block markers). Seed 7 is the demo; choose
operating points on seed 9 only (not scored here). Writes results/continuity.json and results/continuity.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from connectomix import io
from connectomix.models import Architecture, read_checkpoint_meta
from segment_errors import graph_truth

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results"


def run_workflow(model: Path, seed: int, work: Path) -> Path:
    """The workflow on config.yaml with phantom ``seed`` and ``model``; returns the dataset folder."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["results_dir"] = str(work / "results")
    config["datasets"]["phantom"]["phantom"]["seed"] = seed
    config["predict"]["checkpoint"] = str(model.resolve())
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", "2",
                          "--configfile", str(work / "config.yaml")], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    if run.returncode:
        sys.exit(f"the workflow failed for {model} on seed {seed}:\n{run.stderr[-5000:]}")
    return work / "results" / "phantom"


def edge_decisions(dataset: Path) -> dict:
    """F1 of the agglomeration's "same object" decisions on the region graph's z and in-plane edges, against the
    majority ground-truth objects of the two regions (edges touching an unlabelled region are left out)."""
    volume, work = dataset / "volume.zarr", dataset / "segment"
    segmentation = np.asarray(io.open_array(volume, "segmentation")[...])
    _, _, _, _, graph, regions, is_z, (ou, ov) = graph_truth(volume, work)
    known = (ou > 0) & (ov > 0)
    flat_r, flat_s = regions.ravel(), segmentation.ravel()
    first = np.unique(flat_r, return_index=True)
    segment_of = dict(zip(first[0].tolist(), flat_s[first[1]].tolist()))  # a region lies inside one segment
    merged = np.array([segment_of.get(int(u)) == segment_of.get(int(v)) for u, v in zip(graph.u, graph.v)])
    out = {}
    for name, kind in (("z", is_z), ("in_plane", ~is_z)):
        sel = known & kind
        truth, pred = ou[sel] == ov[sel], merged[sel]
        tp = int((truth & pred).sum())
        precision = tp / max(int(pred.sum()), 1)
        recall = tp / max(int(truth.sum()), 1)
        out[f"{name}_edges"] = int(sel.sum())
        out[f"{name}_edge_f1"] = 2 * precision * recall / max(precision + recall, 1e-12)
    return out


def model_costs(model: Path, dataset: Path) -> dict:
    meta = read_checkpoint_meta(model)
    flops, voxels = Architecture.from_dict(meta["architecture"]).conv_flops_per_voxel()
    markers = [json.loads(p.read_text()) for p in (dataset / "blocks" / "predict").glob("z*.json")]
    seconds = sum(m.get("seconds", 0.0) for m in markers)
    predicted = sum(int(np.prod(m["write_shape"])) for m in markers if "write_shape" in m)
    return {"flops_per_voxel": flops / voxels, "context": meta["context"],
            "training_seconds": meta.get("training", {}).get("seconds"),
            "predict_mvoxel_per_s": predicted / seconds / 1e6 if seconds and predicted else None}


def score(dataset: Path) -> dict:
    m = json.loads((dataset / "eval" / "metrics.json").read_text())  # flat "stage.metric" keys
    return {"voi": m.get("segmentation.voi"), "voi_split": m.get("segmentation.voi_split"),
            "voi_merge": m.get("segmentation.voi_merge"), "erl_nm": m.get("skeletons.erl_nm"),
            "neuron_edge_f1": m.get("connectome.edge_f1"), "connected_pairs": m.get("like_to_like.n_connected_pairs"),
            "gt_connected_pairs": m.get("like_to_like.gt_n_connected_pairs"),
            "relative_slope_in_gt_ci": bool(m.get("like_to_like.relative_within_gt_ci")), **edge_decisions(dataset)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", metavar="NAME=PATH",
                        help="a checkpoint folder to score (repeat; default shipped=models/phantom)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 10, 11, 12],
                        help="phantom seeds to score; 7 is the demo, never use 9 (operating points)")
    parser.add_argument("--work", default="/tmp/connectomix-continuity", help="workflow runs (kept)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    models = dict(m.split("=", 1) for m in (args.model or ["shipped=models/phantom"]))
    rows = []
    for name, path in models.items():
        for seed in args.seeds:
            work = Path(args.work) / name / f"seed{seed}"
            dataset = work / "results" / "phantom"
            if not (dataset / "eval" / "metrics.json").exists():
                run_workflow(Path(path), seed, work)
            row = {"model": name, "checkpoint": path, "seed": seed, **score(dataset),
                   **model_costs(Path(path), dataset)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "continuity.json").write_text(json.dumps({"seeds": args.seeds, "rows": rows}, indent=1) + "\n")
    cols = ["voi_split", "voi_merge", "erl_nm", "z_edge_f1", "in_plane_edge_f1", "neuron_edge_f1", "connected_pairs"]
    lines = ["# Continuity ablation (issue 28)", "",
             "`python benchmarks/continuity.py --model NAME=PATH ...`: each model end to end on unseen phantoms "
             "(seed 7 = demo). Goal: ERL >= 1000 nm, VOI split + merge <= 1.5, neuron edge F1 >= 0.4, >= 10 "
             "connected pairs.", "",
             "| model | seed | " + " | ".join(cols) + " | relative slope in GT CI | kFLOP / voxel |",
             "|" + "---|" * (len(cols) + 4)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append(f"| {r['model']} | {r['seed']} | " + " | ".join(cells) +
                     f" | {r['relative_slope_in_gt_ci']} | {r['flops_per_voxel'] / 1e3:.1f} |")
    (out / "continuity.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
