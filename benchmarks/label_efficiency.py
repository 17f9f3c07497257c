"""Label efficiency of self-supervised pretraining (issue 29): 10 % of gala train's labels, from scratch or not.

    python benchmarks/label_efficiency.py [--data ../shared/data] [--threads 1] [--seeds 0 1] [--recipes NAME ...]
        [--variant-seeds 0] [--finetune-iterations 400] [--pretrain-iterations 1000] [--no-full]

The 3D gala recipe of benchmarks/real_em.py (GALA_MODEL, per-volume percentile normalization, mild augmentation)
is trained on the labels of one contiguous sub-block of gala train (``LABEL_BLOCK``: sections 0-39, y 0-49,
x 0-49 of the 50 x 100 x 200 volume, 100,000 voxels = 10.0 % of its labelled voxels; its raw only) for
``--finetune-iterations`` steps:

* **scratch**: from a seeded random start;
* **pretrained (recipe)**: from a checkpoint pretrained by masked-volume reconstruction
  (``connectomix.train.pretrain``) on the *unlabeled raw of all of gala train* (the raw of the other datasets,
  isbi2012 and vnc-sstem, is 50 nm x 4-5 nm anisotropic: no pixel size fits this isotropic 10 nm 3D network, so
  it is not used); gala test's raw is never seen. Same fine-tuning iterations, learning rate and seed as scratch.

Each model is scored on gala test in 3D with real_em.py's scoring (the project's agglomeration: VOI at 0.5 and at
the best threshold of the sweep, ARAND, waterz's best). A full-label model (all of gala train, same iterations) is
the reference. Pretraining recipes are listed in ``RECIPES`` and every one tried is reported; nothing is tuned on
gala test beyond choosing among these few recipes. Models and scores are cached under
benchmarks/out/label_efficiency/ (a rerun reuses them); writes results/label_efficiency.{json,md} after each run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import real_em  # noqa: E402  (the gala recipe, data loading and scoring; puts src/ on the path)

RESULTS = HERE / "results"
OUT = HERE / "out" / "label_efficiency"
LABEL_BLOCK = (slice(0, 40), slice(0, 50), slice(0, 50))
MILD_AUGMENT = {**real_em.MILD_AUGMENT, "transpose": True}
FINETUNE = {**real_em.GALA_BASE, **real_em.NORMALIZED, "augment": MILD_AUGMENT}
# Pretraining recipes (train.pretrain, plus an optional fine-tuning learning-rate override), in the order tried.
RECIPES = {
    "mask4-half": {"pretrain": {"mask_size": [4, 4, 4], "mask_fraction": 0.5, "mask_fill": "noise"}},
    "mask8-half": {"pretrain": {"mask_size": [8, 8, 8], "mask_fraction": 0.5, "mask_fill": "noise"}},
    "mask4-half-lowlr": {"pretrain": {"mask_size": [4, 4, 4], "mask_fraction": 0.5, "mask_fill": "noise"},
                         "finetune_lr": 2.5e-4, "same_pretraining_as": "mask4-half"},
}


def run_dir(name: str) -> Path:
    return OUT / name


def done(path: Path, iterations: int) -> bool:
    meta = path / "checkpoint.json"
    return meta.exists() and json.loads(meta.read_text())["iterations"] >= iterations


def pretrained(recipe: str, raw: np.ndarray, iterations: int, threads: int) -> Path:
    """The checkpoint pretrained on gala train's raw with ``recipe`` (cached)."""
    from connectomix.train.pretrain import pretrain, raw_data

    spec = RECIPES[recipe]
    name = spec.get("same_pretraining_as", recipe)
    out = run_dir(f"pretrain-{name}-{iterations}")
    params = {**FINETUNE, "pretrain": {**RECIPES[name]["pretrain"], "iterations": iterations}}
    if not done(out, iterations):
        t0 = time.time()
        pretrain(raw_data(raw, (10.0, 10.0, 10.0), {"name": "gala-train raw (all, no labels)"}), params, out,
                 device="cpu", threads=threads, progress=False,
                 extra_meta={"command": f"python benchmarks/label_efficiency.py --recipes {recipe}"})
        print(f"pretrain {name}: {time.time() - t0:.0f} s", flush=True)
    return out


def finetuned(name: str, raw, labels, params: dict, threads: int) -> Path:
    from connectomix.train import TrainData, train

    out = run_dir(name)
    if not done(out, params["iterations"]):
        t0 = time.time()
        train(TrainData(raw, labels, (10.0, 10.0, 10.0), None, (False, False, False), {"name": name}), params, out,
              device="cpu", threads=threads, progress=False,
              extra_meta={"command": f"python benchmarks/label_efficiency.py ({name})"})
        print(f"{name}: trained in {time.time() - t0:.0f} s", flush=True)
    return out


def scored(checkpoint: Path, raw, gt) -> dict:
    """real_em.py's scores of ``checkpoint`` on gala test (cached next to the weights, keyed by their sha256)."""
    meta = json.loads((checkpoint / "checkpoint.json").read_text())
    cache = checkpoint / "score_gala_test.json"
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("weights_sha256") == meta["weights_sha256"]:
            return saved["score"]
    result = real_em.score(real_em.affinities(checkpoint, raw), gt, (10.0, 10.0, 10.0), False)
    cache.write_text(json.dumps({"weights_sha256": meta["weights_sha256"], "score": result}, default=float))
    return result


def row(arm: str, recipe: str | None, seed: int, checkpoint: Path, result: dict) -> dict:
    meta = json.loads((checkpoint / "checkpoint.json").read_text())
    return {"arm": arm, "recipe": recipe, "seed": seed, "checkpoint": str(checkpoint.relative_to(HERE.parent)),
            "train_seconds": meta["training"].get("seconds"), "init": meta["training"].get("init"),
            "voi_0.5": result["at_0.5"]["voi"], "voi_split_0.5": result["at_0.5"]["voi_split"],
            "voi_merge_0.5": result["at_0.5"]["voi_merge"], "voi_best": result["best"]["voi"],
            "best_threshold": result["best"]["threshold"], "arand_best": result["best"]["arand"],
            "waterz_best_voi": result["waterz_best"]["voi"]}


def markdown(result: dict) -> str:
    s = result["setup"]
    lines = ["# Label efficiency of self-supervised pretraining (issue 29)", "",
             f"`{s['command']}`. gala-fibsem (10 nm isotropic, 3D). Labels: gala train's sub-block {s['label_block']} "
             f"({s['label_voxels']} voxels, {100 * s['label_fraction']:.1f} % of gala train). Fine-tuning: the 3D gala "
             f"recipe of benchmarks/real_em.py (GALA_MODEL, percentile normalization, mild augmentation), "
             f"{s['finetune_iterations']} iterations. Pretraining: masked-volume reconstruction on all of gala "
             f"train's raw (no labels), {s['pretrain_iterations']} iterations; gala test's raw never seen. Scored on "
             f"gala test in 3D with real_em.py's scoring: VOI in bits (split / merge), lower is better. "
             f"Recipes were chosen among the few listed here only, every one tried is shown.", "",
             "| arm | recipe | seed | VOI @0.5 (split / merge) | VOI best (t) | ARAND best | waterz best VOI | "
             "train s |", "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['arm']} | {r['recipe'] or '-'} | {r['seed']} | {r['voi_0.5']:.3f} "
                     f"({r['voi_split_0.5']:.2f} / {r['voi_merge_0.5']:.2f}) | {r['voi_best']:.3f} "
                     f"({r['best_threshold']:.2f}) | {r['arand_best']:.3f} | {r['waterz_best_voi']:.3f} | "
                     f"{r['train_seconds']:.0f} |")
    lines += ["", "## Mean over seeds", "", "| arm | recipe | seeds | VOI @0.5 | VOI best | ARAND best |",
              "|---|---|---|---|---|---|"]
    for m in result["means"]:
        lines.append(f"| {m['arm']} | {m['recipe'] or '-'} | {m['seeds']} | {m['voi_0.5']:.3f} | "
                     f"{m['voi_best']:.3f} | {m['arand_best']:.3f} |")
    lines += ["", "Recipes (train.pretrain; fine-tuning learning rate 5e-4 unless said):", ""]
    lines += [f"- {k}: {json.dumps(v)}" for k, v in s["recipes"].items()]
    lines += ["", "Pretraining loss (masked-voxel MSE, normalized grey units) per recipe: " + "; ".join(
        f"{k}: {v[0]['masked_mse']:.3f} -> {v[-1]['masked_mse']:.3f}" for k, v in result["pretrain_loss"].items())]
    return "\n".join(lines) + "\n"


def means(runs: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["arm"], r["recipe"]), []).append(r)
    return [{"arm": arm, "recipe": recipe, "seeds": [r["seed"] for r in rs],
             **{k: round(float(np.mean([r[k] for r in rs])), 4) for k in ("voi_0.5", "voi_best", "arand_best")}}
            for (arm, recipe), rs in groups.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(real_em.ROOT.parent / "shared" / "data"),
                        help="folder of the real datasets (gala-fibsem/{train,test}-{image,gt.lzf}.h5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--recipes", nargs="+", default=["mask4-half"], choices=sorted(RECIPES))
    parser.add_argument("--finetune-iterations", type=int, default=400)
    parser.add_argument("--pretrain-iterations", type=int, default=1000)
    parser.add_argument("--variant-seeds", type=int, nargs="+",
                        help="seeds of the recipes after the first (default: --seeds), to try variants on fewer")
    parser.add_argument("--no-full", action="store_true", help="skip the full-label reference model")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    gala = Path(args.data) / "gala-fibsem"
    raw_train, gt_train = real_em._h5(gala / "train-image.h5"), real_em._h5(gala / "train-gt.lzf.h5").astype(np.uint64)
    raw_test, gt_test = real_em._h5(gala / "test-image.h5"), real_em._h5(gala / "test-gt.lzf.h5").astype(np.uint64)
    raw_sub, gt_sub = raw_train[LABEL_BLOCK], gt_train[LABEL_BLOCK]
    command = "python benchmarks/label_efficiency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    setup = {"command": command.strip(), "data": str(gala),
             "label_block": [[s.start, s.stop] for s in LABEL_BLOCK], "label_voxels": int(gt_sub.size),
             "label_fraction": round(gt_sub.size / gt_train.size, 4), "finetune_iterations": args.finetune_iterations,
             "pretrain_iterations": args.pretrain_iterations, "finetune_params": FINETUNE,
             "recipes": {k: RECIPES[k] for k in args.recipes}}
    result = {"setup": setup, "runs": [], "means": [], "pretrain_loss": {}}
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = {**FINETUNE, "iterations": args.finetune_iterations}

    def record(arm, recipe, seed, checkpoint):
        result["runs"].append(row(arm, recipe, seed, checkpoint, scored(checkpoint, raw_test, gt_test)))
        result["means"] = means(result["runs"])
        print(json.dumps({k: result["runs"][-1][k] for k in ("arm", "recipe", "seed", "voi_0.5", "voi_best")}),
              flush=True)
        (RESULTS / "label_efficiency.json").write_text(json.dumps(result, indent=1, default=float))
        (RESULTS / "label_efficiency.md").write_text(markdown(result))

    for seed in args.seeds:
        name = f"scratch-{args.finetune_iterations}-s{seed}"
        record("scratch, 10 % labels", None, seed, finetuned(name, raw_sub, gt_sub, {**base, "seed": seed},
                                                              args.threads))
        for recipe in args.recipes:
            if recipe != args.recipes[0] and args.variant_seeds is not None and seed not in args.variant_seeds:
                continue
            ck = pretrained(recipe, raw_train, args.pretrain_iterations, args.threads)
            result["pretrain_loss"][recipe] = json.loads((ck / "checkpoint.json").read_text())["loss_history"]
            params = {**base, "seed": seed, "init_from": str(ck)}
            if "finetune_lr" in RECIPES[recipe]:
                params["learning_rate"] = RECIPES[recipe]["finetune_lr"]
            name = f"{recipe}-{args.pretrain_iterations}-ft{args.finetune_iterations}-s{seed}"
            record("pretrained, 10 % labels", recipe, seed, finetuned(name, raw_sub, gt_sub, params, args.threads))
    if not args.no_full:
        name = f"full-{args.finetune_iterations}-s{args.seeds[0]}"
        record("scratch, all labels", None, args.seeds[0],
               finetuned(name, raw_train, gt_train, {**base, "seed": args.seeds[0]}, args.threads))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
