"""Boundary quality of the U-Net: phantom hold-out and gala-fibsem test (with gala's own p1 map as a baseline).

    python benchmarks/boundary_quality.py [--skip-phantom] [--skip-gala] [--gala-iterations N]

* Phantom: the shipped checkpoint (models/phantom) on the validation slab of the phantom it trained on (the last
  ``validation_fraction`` of its sections) and, when it trained on another seed, on the whole phantom of the
  default config.yaml (a test volume it never saw): edge P/R/F1 (cut affinities), voxel boundary P/R/F1 (exact and
  with 1 voxel in-plane tolerance), cleft/pre/post voxel P/R/F1, and cleft objects at the operating point of
  config.yaml's ``synapses`` section (threshold, smoothing, minimum size; centroids matched within 200 nm).
* gala-fibsem (real FIB-SEM, ../shared/data; skipped with a message when absent): a model is trained with the
  project's own `connectomix.train` directly from train-image.h5 / train-gt.lzf.h5 (cached under
  benchmarks/out/gala-model), then evaluated on test-image.h5 against test-gt (0 = boundary voxel). Baseline:
  gala's own boundary probabilities test-p1. Both at threshold 0.5 and at each one's best threshold.

Writes results/boundary_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from connectomix.models import load_checkpoint  # noqa: E402
from connectomix.predict import predict_volume  # noqa: E402
from connectomix.evaluate.boundaries import boundary_map, boundary_prf, gt_boundaries, prf  # noqa: E402
from connectomix.evaluate.synapses import cleft_object_prf  # noqa: E402
from connectomix.train import TrainData, affinity_targets, merge_params, synapse_targets, train  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHARED = ROOT.parent / "shared" / "data"
GALA_PARAMS = {
    "seed": 0, "iterations": 1500, "batch_size": 1, "output_shape": [12, 48, 48], "validation_fraction": 0.0,
    "checkpoint_every": 100, "augment": {"misalign_prob": 0.0, "missing_section_prob": 0.0},
    "model": {"num_fmaps": 8, "fmap_inc_factor": 2, "downsample_factors": [[2, 2, 2], [2, 2, 2]],
              "kernel_sizes": [[3, 3, 3], [3, 3, 3], [3, 3, 3]], "synapses": False},
}


def _best_threshold(prob: np.ndarray, truth: np.ndarray, tolerance: int = 0) -> dict:
    best = {"f1": -1}
    for t in np.linspace(0.1, 0.9, 17):
        m = boundary_prf(prob > t, truth, tolerance)
        if m["f1"] > best["f1"]:
            best = {**m, "threshold": round(float(t), 3)}
    return best


def _polarity(syn: np.ndarray, labels: np.ndarray, clefts: np.ndarray, synapses, voxel_size,
              distance_nm: float) -> dict:
    """Per ground-truth synapse: mean pre / post probability on each side (object voxels within ``distance_nm``
    of its cleft); a synapse's polarity is right when pre is higher on the pre side and post on the post side;
    ranked right (what ``synapses.polarity: relative`` needs) when pre minus post is higher on the pre side."""
    right, ranked, margins = [], [], []
    for row in synapses.itertuples():
        one = synapses[synapses.id == row.id]
        t = synapse_targets(labels, clefts, one, voxel_size, distance_nm)  # pre/post of this synapse only
        if not (t[1].any() and t[2].any()):
            continue
        pre_margin = syn[1][t[1]].mean() - syn[1][t[2]].mean()
        post_margin = syn[2][t[2]].mean() - syn[2][t[1]].mean()
        right.append(pre_margin > 0 and post_margin > 0)
        ranked.append(pre_margin + post_margin > 0)
        margins.append(min(pre_margin, post_margin))
    return {"synapses": len(right), "right": float(np.mean(right)) if right else float("nan"),
            "ranked_right": float(np.mean(ranked)) if ranked else float("nan"),
            "median_margin": float(np.median(margins)) if margins else float("nan")}


def _scores(model, meta, ph, sections, voxel_size, synapse_params: dict) -> dict:
    from connectomix.predict import quantize
    from connectomix.synapses import threshold_cleft

    z0, z1 = sections
    raw, labels, clefts = ph.raw[z0:z1], ph.labels[z0:z1], ph.clefts[z0:z1]
    t = time.perf_counter()
    aff, syn = predict_volume(model, raw)
    seconds = time.perf_counter() - t
    target, mask = affinity_targets(labels, model.arch.offsets)
    truth = gt_boundaries(labels)
    bmap = boundary_map(aff, "min")
    out = {"sections": [z0, z1], "shape": list(raw.shape), "predict_seconds": round(seconds, 2),
           "edge": prf(aff[:3] < 0.5, ~target[:3], mask[:3]),
           **{f"edge_{axis}": prf(aff[c] < 0.5, ~target[c], mask[c]) for c, axis in enumerate("zyx")},
           "boundary_exact": boundary_prf(bmap > 0.5, truth, 0),
           "boundary_tol1": boundary_prf(bmap > 0.5, truth, 1)}
    if model.arch.synapse_channels:
        syn_t = synapse_targets(labels, clefts, ph.synapses, voxel_size,
                                meta["training"]["params"]["pre_post_distance_nm"])
        for c, name in enumerate(("cleft", "pre", "post")):
            out[name] = prf(syn[c] > 0.5, syn_t[c])
        in_slab = ph.synapses[np.isin(ph.synapses.id, np.unique(clefts))]
        out["polarity"] = _polarity(syn, labels, clefts, in_slab, voxel_size,
                                    meta["training"]["params"]["pre_post_distance_nm"])
        detected = threshold_cleft(quantize(syn[0]), voxel_size, synapse_params)
        out["cleft_objects"] = cleft_object_prf(detected, clefts > 0, voxel_size,
                                                min_size=synapse_params["min_size_voxels"])
    return out


def phantom(threads: int) -> dict:
    import yaml

    from connectomix.synapses import resolve

    ck = ROOT / "models" / "phantom"
    if not (ck / "checkpoint.json").exists():
        return {"skipped": "no shipped checkpoint at models/phantom"}
    model, meta = load_checkpoint(ck)
    try:
        from connectomix.phantom import PhantomParams, generate
    except ImportError as error:
        return {"skipped": f"phantom generator unavailable ({error})"}
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    synapse_params = resolve(config.get("synapses"))
    data_desc = meta["training"]["data"]
    spec = data_desc.get("phantom_params", {"seed": 7})
    voxel_size = tuple(data_desc.get("voxel_size", (40, 8, 8)))
    ph = generate(PhantomParams.from_dict(spec), voxel_size)
    out = {"checkpoint": str(ck.relative_to(ROOT)), "iterations": meta["iterations"],
           "init": meta["training"].get("init"), "trained_on": spec,
           "synapse_operating_point": {k: synapse_params[k] for k in
                                       ("threshold", "smooth_sigma_nm", "min_size_voxels")},
           "holdout": _scores(model, meta, ph, data_desc["validation_sections"], voxel_size, synapse_params)}
    test_spec = next(iter(config["datasets"].values())).get("phantom")
    if test_spec is not None and test_spec != spec:
        test = generate(PhantomParams.from_dict(test_spec), voxel_size)
        out["test_phantom"] = test_spec
        out["test"] = _scores(model, meta, test, (0, test.raw.shape[0]), voxel_size, synapse_params)
    return out


def _h5(name):
    import h5py

    with h5py.File(SHARED / "gala-fibsem" / name, "r") as f:
        return f["stack"][...]


def gala(threads: int, iterations: int) -> dict:
    if not (SHARED / "gala-fibsem").is_dir():
        return {"skipped": f"real data not found at {SHARED} (a fresh clone has no ../shared)"}
    params = merge_params({**GALA_PARAMS, "iterations": iterations})
    out_dir = HERE / "out" / "gala-model"
    raw, gt = _h5("train-image.h5"), _h5("train-gt.lzf.h5")
    data = TrainData(raw, gt.astype(np.uint64), (10, 10, 10), None, (False, False, False),
                     {"source": "gala-fibsem train-image.h5 / train-gt.lzf.h5 (0 = boundary)"})
    t = time.perf_counter()
    meta = train(data, params, out_dir, device="auto", threads=threads, progress=True,
                 extra_meta={"command": "python benchmarks/boundary_quality.py"})
    train_s = time.perf_counter() - t
    model, meta = load_checkpoint(out_dir)
    test_raw, test_gt, p1 = _h5("test-image.h5"), _h5("test-gt.lzf.h5"), _h5("test-p1.lzf.h5")
    aff, _ = predict_volume(model, test_raw)
    truth = test_gt == 0
    # gala boundaries are label-0 voxels: a voxel is boundary when all its incident affinities are cut
    ours = boundary_map(aff, "max", in_plane=False)
    result = {"train_iterations": meta["iterations"], "train_seconds_this_run": round(train_s, 1),
              "train_seconds_total": meta["training"]["seconds"], "model": meta["architecture"]}
    for tol in (0, 1):
        result[f"unet_tol{tol}_t0.5"] = boundary_prf(ours > 0.5, truth, tol)
        result[f"p1_tol{tol}_t0.5"] = boundary_prf(p1 > 0.5, truth, tol)
        result[f"unet_tol{tol}_best"] = _best_threshold(ours, truth, tol)
        result[f"p1_tol{tol}_best"] = _best_threshold(p1, truth, tol)
    target, mask = affinity_targets(test_gt.astype(np.uint64), model.arch.offsets)
    result["unet_edge"] = prf(aff[:3] < 0.5, ~target[:3], mask[:3])
    return result


def _fmt(m: dict) -> str:
    return f"{m['precision']:.3f} / {m['recall']:.3f} / **{m['f1']:.3f}**" + (
        f" (t={m['threshold']})" if "threshold" in m else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-phantom", action="store_true")
    parser.add_argument("--skip-gala", action="store_true")
    parser.add_argument("--gala-iterations", type=int, default=GALA_PARAMS["iterations"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    previous = {}
    if (RESULTS / "boundary_quality.json").exists():
        previous = json.loads((RESULTS / "boundary_quality.json").read_text())
    result = {
        "phantom": previous.get("phantom", {"skipped": "not run"}) if args.skip_phantom else phantom(args.threads),
        "gala": previous.get("gala", {"skipped": "not run"}) if args.skip_gala else gala(args.threads,
                                                                                         args.gala_iterations),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "boundary_quality.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Boundary quality (precision / recall / F1)", ""]
    ph = result["phantom"]
    lines.append("## Phantom (shipped checkpoint)")
    if "skipped" in ph:
        lines.append(f"skipped: {ph['skipped']}")
    else:
        parts = [("holdout", f"validation sections {ph['holdout']['sections']} of the training phantom "
                             f"{json.dumps(ph['trained_on'])}")]
        if "test" in ph:
            parts.append(("test", f"the whole default phantom {json.dumps(ph['test_phantom'])}, never trained on"))
        init = ph.get("init") or {}
        lines += [f"{ph['iterations']} training iterations"
                  + (f" (from a {init['iterations']}-iteration checkpoint)" if init.get("iterations") else "")
                  + ". Columns: " + "; ".join(f"**{k}**: {v}" for k, v in parts)
                  + f". Cleft objects at config.yaml's operating point {json.dumps(ph['synapse_operating_point'])}"
                  " (centroids matched one-to-one within 200 nm).", "",
                  "| metric | " + " | ".join(k for k, _ in parts) + " |", "|---|" + "---|" * len(parts)]
        rows = [("edges (cut nearest-neighbour affinities)", "edge"), ("z edges (between sections)", "edge_z"),
                ("y edges", "edge_y"), ("x edges", "edge_x"), ("boundary voxels, exact", "boundary_exact"),
                ("boundary voxels, 1-voxel in-plane tolerance", "boundary_tol1"), ("cleft voxels", "cleft"),
                ("pre voxels", "pre"), ("post voxels", "post"), ("cleft objects", "cleft_objects")]
        for label, key in rows:
            if key in ph["holdout"]:
                lines.append(f"| {label} | " + " | ".join(_fmt(ph[k][key]) for k, _ in parts) + " |")
        if "polarity" in ph["holdout"]:
            lines.append("| polarity: share of GT synapses with pre higher on the pre side and post on the post side "
                         "(median margin) | " + " | ".join(
                             f"{ph[k]['polarity']['right']:.2f} of {ph[k]['polarity']['synapses']} "
                             f"({ph[k]['polarity']['median_margin']:.2f})" for k, _ in parts) + " |")
            if "ranked_right" in ph["holdout"]["polarity"]:
                lines.append("| polarity ranked: share with pre minus post higher on the pre side | " + " | ".join(
                    f"{ph[k]['polarity']['ranked_right']:.2f}" for k, _ in parts) + " |")
    lines += ["", "## gala-fibsem test volume (real FIB-SEM, 50 x 100 x 200)"]
    g = result["gala"]
    if "skipped" in g:
        lines.append(f"skipped: {g['skipped']}")
    else:
        lines += [f"U-Net trained on gala train ({g['train_iterations']} iterations, "
                  f"{g['train_seconds_total'] / 60:.1f} min CPU); ground truth boundary = label 0 voxels.", "",
                  "| boundaries | tolerance | U-Net @0.5 | gala p1 @0.5 | U-Net best t | gala p1 best t |",
                  "|---|---|---|---|---|---|"]
        for tol in (0, 1):
            lines.append(f"| voxels | {tol} | {_fmt(g[f'unet_tol{tol}_t0.5'])} | {_fmt(g[f'p1_tol{tol}_t0.5'])} | "
                         f"{_fmt(g[f'unet_tol{tol}_best'])} | {_fmt(g[f'p1_tol{tol}_best'])} |")
    lines.append("")
    (RESULTS / "boundary_quality.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
