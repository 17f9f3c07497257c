"""Real EM the model has never seen: leave one dataset out, the shipped real-EM model, the whole workflow (issue 29).

    python benchmarks/real_em.py [--data ../shared/data] [--only NAME ...] [--skip fibsem ...] [--threads 1]
                                 [--extra-test NAME=RAW_H5:GT_H5 ...]

Models are trained with the project's own ``connectomix.train`` and cached under benchmarks/out/real_em/<name> (a
cached run is reused, a partial one resumes); scores are cached per weights and test volume.

* **Leave one dataset out (2D, per section)**: for each real dataset, a model trained on all the other labelled
  data at hand (the other real datasets and the phantom, all resampled in-plane to the left-out dataset's pixel
  size, the way a user trains for their own volume) is compared with one trained on that dataset's own training
  part, on its held-out part (gala test; isbi2012 sections 24-29; vnc-sstem sections 08-11), by per-section VOI
  through the project's agglomeration. Ablations of the "others" model: fixed 0..255 input range instead of the
  per-volume percentile stretch, and the default augmentation instead of the real-data one (gamma, blur, stronger
  contrast and noise). Section by section (in-plane kernels, 2D instance targets), since two of the three datasets
  have 2D labels only.
* **The shipped model** (models/real-em): every dataset's training part at its own pixel size plus the phantom,
  scored per section on every held-out part, on gala test with its grey values changed the way another microscope
  or staining changes them (compressed to 49..209, gamma 1.6, darker and noisier; never trained on nor tuned to),
  and on any ``--extra-test`` volume (HDF5 dataset 'stack' in both files, 10 nm isotropic).
* **The whole workflow**: snakemake on ``config/examples/<dataset>.yaml`` (training off) with each left-out
  dataset's "others" model, and with the shipped model: does it run to the end, and ``eval/metrics.json``.
* **FIB-SEM (3D; ``--skip fibsem`` leaves it out, ~2 h on 2 cores)**: the gala 3D recipe trained on gala train
  with and without normalization and augmentation, scored in 3D on gala test and its grey-value-changed copies.

Segmentation: the project's blockwise mean-affinity agglomeration (``connectomix.segment``) at 0.5 and at the best
threshold of a sweep; waterz on the same affinities as the peer. Writes benchmarks/results/real_em.{json,md}
(without ``--only``; with it, benchmarks/out/real_em/partial.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE / "out" / "real_em"
THRESHOLDS = [round(t, 2) for t in np.arange(0.3, 0.951, 0.05)]

GALA_MODEL = {"num_fmaps": 8, "fmap_inc_factor": 2, "downsample_factors": [[2, 2, 2], [2, 2, 2]],
              "kernel_sizes": [[3, 3, 3], [3, 3, 3], [3, 3, 3]], "synapses": False}
GALA_BASE = {"seed": 0, "iterations": 1000, "batch_size": 1, "output_shape": [12, 48, 48],
             "validation_fraction": 0.0, "checkpoint_every": 100,
             "augment": {"misalign_prob": 0.0, "missing_section_prob": 0.0}, "model": GALA_MODEL}
NORMALIZED = {"input_normalization": {"method": "percentile", "percentiles": [1, 99]}}
REAL_AUGMENT = {"misalign_prob": 0.0, "missing_section_prob": 0.0, "intensity": 0.35, "noise": 0.08,
                "gamma": 0.5, "blur": 1.5, "transpose": True}
MILD_AUGMENT = {"misalign_prob": 0.0, "missing_section_prob": 0.0, "intensity": 0.3, "noise": 0.05,
                "gamma": 0.4, "blur": 0.7}
FIBSEM_RUNS = {  # the candidates first, then the ablations
    "fibsem-norm-aug": {**GALA_BASE, **NORMALIZED, "augment": REAL_AUGMENT},
    "fibsem-norm-mild": {**GALA_BASE, **NORMALIZED, "augment": MILD_AUGMENT, "iterations": 1500},
    "fibsem-base": GALA_BASE,
    "fibsem-norm": {**GALA_BASE, **NORMALIZED},
}

SECTION_MODEL = {"num_fmaps": 12, "fmap_inc_factor": 2, "downsample_factors": [[1, 2, 2], [1, 2, 2], [1, 2, 2]],
                 "kernel_sizes": [[1, 3, 3], [1, 3, 3], [1, 3, 3], [1, 3, 3]], "synapses": False}
SECTION_PARAMS = {"seed": 0, "iterations": 1500, "batch_size": 4, "output_shape": [1, 64, 64],
                  "validation_fraction": 0.0, "checkpoint_every": 100, **NORMALIZED,
                  "augment": {**REAL_AUGMENT, "transpose": False, "flip": True}, "model": SECTION_MODEL}
LOO_ABLATIONS = {  # trained on all other datasets without one ingredient each
    "others-fixed": {**SECTION_PARAMS, "input_normalization": {"method": "fixed"}},
    "others-plain": {**SECTION_PARAMS, "augment": {"misalign_prob": 0.0, "missing_section_prob": 0.0}},
}
SHIPPED_RUNS = {  # models/real-em (the first): every training part at its own pixel size, plus the phantom
    "real-em": {**SECTION_PARAMS, "iterations": 4000, "dataset_sampling": "equal"},
    "real-em-by-voxels": {**SECTION_PARAMS, "iterations": 4000},  # patches drawn in proportion to voxels
}
REAL = ("gala", "isbi2012", "vnc-sstem")


# --- data --------------------------------------------------------------------------------------------------


def _h5(path, key="stack"):
    import h5py

    with h5py.File(path, "r") as f:
        return np.asarray(f[key][...])


def _images(folder):
    from skimage.io import imread

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
    return np.stack([np.asarray(imread(f)) for f in files])


def real_volumes(data: Path) -> dict:
    """name -> (raw uint8, labels uint64 (0 = boundary), voxel size nm, per_section), train and test parts."""
    from connectomix.evaluate.segmentation import load_ground_truth

    out = {}
    gala = data / "gala-fibsem"
    if gala.is_dir():
        for part in ("train", "test"):
            out[f"gala-{part}"] = (_h5(gala / f"{part}-image.h5"), _h5(gala / f"{part}-gt.lzf.h5").astype(np.uint64),
                                   (10.0, 10.0, 10.0), False)
    isbi = data / "isbi2012"
    if isbi.is_dir():
        raw = _images(isbi / "image")
        gt = load_ground_truth(gt_file=isbi / "label", gt_format="png-membrane")
        out["isbi2012-train"] = (raw[:24], gt[:24], (50.0, 4.0, 4.0), True)
        out["isbi2012-test"] = (raw[24:], gt[24:], (50.0, 4.0, 4.0), True)
    vnc = data / "vnc-sstem"
    if vnc.is_dir():
        raw = _images(vnc / "raw")
        gt = load_ground_truth(gt_file=vnc / "membranes", gt_format="png-boundary")
        out["vnc-sstem-train"] = (raw[:8], gt[:8], (50.0, 4.6, 4.6), True)
        out["vnc-sstem-test"] = (raw[8:], gt[8:], (50.0, 4.6, 4.6), True)
    return out


def stressed(raw: np.ndarray) -> dict:
    """Grey-value changes another acquisition brings, applied to a test volume (never trained on)."""
    x = raw.astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    return {
        "grey 49..209": 49 + x * 160,
        "gamma 1.6": 255 * x ** 1.6,
        "darker, noisier": 255 * (0.1 + 0.6 * x) + rng.normal(0, 8, x.shape),
    }


def _u8(x):
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --- training ----------------------------------------------------------------------------------------------

CACHED_ONLY = False  # --cached-only: report only models already trained under OUT


class NotTrained(Exception):
    """A model that --cached-only does not train."""


def train_run(name: str, datasets, params: dict, threads: int) -> Path:
    from connectomix.train import TrainData, train

    out = OUT / name
    done = out / "checkpoint.json"
    if done.exists() and json.loads(done.read_text())["iterations"] >= params["iterations"]:
        return out
    if CACHED_ONLY:
        raise NotTrained(name)
    items = [TrainData(raw, labels, vs, None, (False, False, False), {"name": n}, per_section)
             for n, (raw, labels, vs, per_section) in datasets]
    t0 = time.time()
    train(items if len(items) > 1 else items[0], params, out, device="cpu", threads=threads, progress=False,
          extra_meta={"command": f"python benchmarks/real_em.py --only {name}",
                      "datasets": [n for n, _ in datasets]})
    print(f"{name}: trained in {time.time() - t0:.0f} s", flush=True)
    return out


def at_pixel(raw, labels, vs, pixel_nm: float):
    """A volume resampled in-plane to ``pixel_nm`` (linear raw, nearest labels); sections stay sections."""
    from connectomix.train import TrainData
    from connectomix.train.data import at_pixel_nm

    d = at_pixel_nm(TrainData(raw, labels, vs, per_section=True), pixel_nm)
    return d.raw, d.labels, d.voxel_size, True


def phantom_sections():
    from connectomix.phantom import PhantomParams, generate

    ph = generate(PhantomParams.from_dict({"seed": 8}), (40, 8, 8))
    return np.asarray(ph.raw), np.asarray(ph.labels).astype(np.uint64), (40.0, 8.0, 8.0), True


# --- evaluation --------------------------------------------------------------------------------------------


def affinities(checkpoint: Path, raw: np.ndarray) -> np.ndarray:
    from connectomix.models import load_checkpoint
    from connectomix.predict import predict_volume, quantize

    model, _ = load_checkpoint(checkpoint)
    aff, _ = predict_volume(model, raw, tile_shape=(24, 128, 128))
    return quantize(aff[:3])


def score(affs: np.ndarray, gt: np.ndarray, vs, sections: bool) -> dict:
    """VOI at 0.5 and at the best threshold of the project's agglomeration, and waterz's best, on ``affs``."""
    from connectomix import io
    from connectomix.blockwise import load_setup
    from connectomix.evaluate.segmentation import per_section, threshold_sweep
    from connectomix.segment import stitch
    from connectomix.segment.rag import Rag
    from connectomix.synthetic import segment as syn

    if sections:
        affs = affs.copy()
        affs[0] = 0  # per-section evaluation: no links between sections
        gt = per_section(gt)
    with tempfile.TemporaryDirectory(prefix="cmx_realem_") as tmp:
        root = Path(tmp) / "volume.zarr"
        syn.write_test_volume(root, affs, vs, (8, 64, 64))
        block = (min(32, affs.shape[1]), 256, 256)
        block = tuple(-(-b // c) * c for b, c in zip(block, (8, 64, 64)))
        stitch.segment_volume(root, Path(tmp) / "work", {"agglomerate": {"method": "mean", "threshold": 0.5},
                                                         "fragments": {"mode": "2d" if sections else "auto"}},
                              block, (8, 64, 64))
        frags = np.asarray(io.open_array(root, "fragments")[...])
        nodes, merges = stitch.agglomerate_graph(Rag.from_npz(Path(tmp) / "work" / "graph.npz"),
                                                 load_setup(Path(tmp) / "work")["params"], threshold=1.0)
        rows = threshold_sweep(gt, frags, nodes, merges, THRESHOLDS, sections=sections)
    at = {r["threshold"]: r for r in rows}
    best = min(rows, key=lambda r: r["voi"])
    sweep = [{k: r[k] for k in ("threshold", "voi", "voi_split", "voi_merge", "arand")} for r in rows]
    return {"at_0.5": at[0.5], "best": best, "sweep": sweep, "waterz_best": waterz_best(affs, gt, sections)}


def waterz_best(affs, gt, sections) -> dict:
    import waterz

    from connectomix.evaluate.segmentation import metrics, per_section

    a = np.ascontiguousarray(affs.astype(np.float32) / 255.0)
    best = None
    for seg in waterz.agglomerate(a, THRESHOLDS):
        s = per_section(seg) if sections else seg
        m = metrics(gt, s)
        best = m if best is None or m["voi"] < best["voi"] else best
    return {k: round(float(v), 4) for k, v in best.items()}


# --- the two experiments -----------------------------------------------------------------------------------


def cached_score(checkpoint: Path, test: str, raw, gt, vs, sections: bool) -> dict:
    """:func:`score` of ``checkpoint``'s affinities on ``raw``, kept under OUT/scores per weights and test, so a
    later run (e.g. the one that writes the tables) reuses it."""
    sha = json.loads((Path(checkpoint) / "checkpoint.json").read_text())["weights_sha256"][:16]
    key = OUT / "scores" / f"{sha}-{test.replace(' ', '_').replace(',', '').replace('.', '')}.json"
    if key.exists():
        return json.loads(key.read_text())
    result = score(affinities(checkpoint, raw), gt, vs, sections)
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(json.dumps(result, default=float))
    return result


def fibsem(vols: dict, threads: int, only, extra: dict) -> list[dict]:
    if "gala-train" not in vols:
        return [{"skipped": "gala-fibsem not found"}]
    raw_test, gt_test, vs, _ = vols["gala-test"]
    tests = {"gala test": raw_test, **{f"gala test, {k}": _u8(v) for k, v in stressed(raw_test).items()}}
    rows = []
    for name, params in FIBSEM_RUNS.items():
        if only and name not in only:
            continue
        ck = train_run(name, [("gala-train", vols["gala-train"])], params, threads)
        for test, raw in tests.items():
            rows.append({"model": name, "test": test, **cached_score(ck, test, raw, gt_test, vs, False)})
            print(json.dumps({k: rows[-1][k] for k in ("model", "test")} | {"voi": rows[-1]["best"]["voi"]}),
                  flush=True)
        for test, (raw, gt, evs) in extra.items():
            rows.append({"model": name, "test": test, **cached_score(ck, test, raw, gt, evs, False)})
    return rows


def leave_one_out(vols: dict, threads: int, only) -> list[dict]:
    have = [r for r in REAL if f"{r}-train" in vols or f"{r}-test" in vols]
    if len(have) < 2:
        return [{"skipped": f"leave-one-out needs two real datasets, found {have}"}]
    phantom = phantom_sections()
    rows = []
    for left in have:
        pixel = vols[f"{left}-test"][2][1]
        sections = {name: at_pixel(*v[:3], pixel) for name, v in vols.items()}
        own = [(f"{left}-train", sections[f"{left}-train"])]
        others = [(n, s) for n, s in sections.items() if not n.startswith(left)] + [
            ("phantom", at_pixel(*phantom[:3], pixel))]
        runs = [("own training part", "own", own, SECTION_PARAMS), ("all other datasets", "others", others,
                                                                      SECTION_PARAMS)]
        runs += [(f"all other datasets, {'fixed 0..255 input range' if v.endswith('fixed') else 'default augmentation'}",
                  v, others, p) for v, p in LOO_ABLATIONS.items()]
        for kind, suffix, data, params in runs:
            name = f"sections-{left}-{suffix}"
            if only and name not in only:
                continue
            try:
                ck = train_run(name, data, params, threads)
            except NotTrained:
                rows.append({"skipped": f"{name} not trained (--cached-only)"})
                continue
            raw, gt, vs, _ = sections[f"{left}-test"]
            rows.append({"left_out": left, "pixel_nm": pixel, "trained_on": kind, "datasets": [n for n, _ in data],
                         "model": name,
                         **cached_score(ck, f"{left}-test", raw, gt, vs, True)})
            print(json.dumps({"model": name, "voi": rows[-1]["best"]["voi"]}), flush=True)
    return rows


def shipped(vols: dict, threads: int, only, extra: dict) -> list[dict]:
    """The shipped real-EM model (models/real-em): every dataset's training part at its own pixel size plus the
    phantom, scored per section on every held-out part and on gala test with other grey values."""
    have = [r for r in REAL if f"{r}-train" in vols]
    if not have:
        return [{"skipped": "no real dataset found"}]
    phantom = phantom_sections()
    data = [(f"{r}-train", at_pixel(*vols[f"{r}-train"][:3], vols[f"{r}-train"][2][1])) for r in have]
    tests = {f"{r}-test": vols[f"{r}-test"] for r in have}
    if "gala-test" in tests:
        raw, gt, vs, _ = tests["gala-test"]
        tests.update({f"gala-test, {k}": (_u8(v), gt, vs, False) for k, v in stressed(raw).items()})
    tests.update({name: (raw, gt, vs, False) for name, (raw, gt, vs) in extra.items()})
    rows = []
    for name, params in SHIPPED_RUNS.items():
        if only and name not in only:
            continue
        try:
            ck = train_run(name, data + [("phantom", phantom)], params, threads)
        except NotTrained:
            rows.append({"skipped": f"{name} not trained (--cached-only)"})
            continue
        for test, (raw, gt, vs, _) in tests.items():
            rows.append({"model": name, "test": test, "datasets": [n for n, _ in data] + ["phantom"],
                         "dataset_sampling": params.get("dataset_sampling", "voxels"),
                         **cached_score(ck, test, raw, gt, vs, True)})
            print(json.dumps({"model": name, "test": test, "voi": rows[-1]["best"]["voi"]}), flush=True)
    return rows


EXAMPLES = {"gala": "gala-fibsem.yaml", "isbi2012": "isbi2012.yaml", "vnc-sstem": "vnc-sstem.yaml"}


def pipeline_runs(data: Path) -> dict:
    """name -> (example config, checkpoint, config overrides): each left-out dataset with the model trained on all
    the others, and the examples that use the shipped model."""
    gala = data / "gala-fibsem"
    per_section = {"segment.fragments.mode": "2d"}
    return {
        "gala, left out": ("gala", OUT / "sections-gala-others", {
            **per_section, **{f"segment.evaluation.ground_truth.gala-{p}": {
                "path": str(gala / f"{p}-gt.lzf.h5"), "key": "stack", "per_section": True} for p in ("train", "test")}}),
        # no labels of the left-out dataset choose a threshold: the default 0.5 (vnc-sstem: its example's 0.8)
        "isbi2012, left out": ("isbi2012", OUT / "sections-isbi2012-others", {
            **per_section, "segment.agglomerate.threshold": 0.5}),
        "vnc-sstem, left out": ("vnc-sstem", OUT / "sections-vnc-sstem-others", per_section),
        "isbi2012, shipped model": ("isbi2012", ROOT / "models" / "real-em", {}),  # the example as it is
    }


def pipeline(runs: dict, cores: int, only_runs=None) -> list[dict]:
    """The whole workflow (snakemake, config/examples/<dataset>.yaml) with each run's model and overrides: does it
    run to the end, and what does ``eval/metrics.json`` say."""
    import subprocess

    import yaml

    rows = []
    for name, (left, checkpoint, overrides) in runs.items():
        if only_runs and name not in only_runs:
            continue
        if not (Path(checkpoint) / "checkpoint.json").exists():
            rows.append({"run": name, "skipped": f"no model at {checkpoint}"})
            continue
        cfg = yaml.safe_load((ROOT / "config" / "examples" / EXAMPLES[left]).read_text())
        results = OUT / "pipeline" / name.replace(", ", "-").replace(" ", "-")
        cfg["results_dir"] = str(results)
        cfg["train"] = {**cfg.get("train", {}), "enabled": False}
        cfg["predict"] = {**cfg.get("predict", {}), "checkpoint": str(checkpoint)}
        for key, value in overrides.items():  # e.g. segment.fragments.mode
            node = cfg
            *path, last = key.split(".")
            for part in path:
                node = node.setdefault(part, {})
            node[last] = value
        config = results.with_suffix(".yaml")
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        t0 = time.time()
        run = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", str(cores),
                              "--nolock", "--configfile", str(config)], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
        row = {"run": name, "checkpoint": str(checkpoint), "overrides": overrides, "completed": run.returncode == 0,
               "seconds": round(time.time() - t0, 1)}
        if run.returncode:
            row["error_tail"] = (run.stdout + run.stderr)[-3000:]
        for name in cfg["datasets"]:
            metrics = results / name / "eval" / "metrics.json"
            if metrics.exists():
                m = json.loads(metrics.read_text())
                row[name] = {k: m[k] for k in sorted(m) if k.startswith("segmentation.") and "voi" in k
                             or k.startswith("segmentation.arand")}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "error_tail"}), flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = ["# Real EM it has never seen (issue 29)", "",
             "`python benchmarks/real_em.py`. VOI in bits (split / merge), lower is better; the project's "
             "mean-affinity agglomeration at 0.5 and at its best threshold, waterz's best on the same affinities."]
    if result["fibsem"]:
        lines += ["", "## FIB-SEM: gala train -> gala test, and gala test with other grey values (3D)", "",
                  "| model | test volume | VOI @0.5 | VOI best (t) | ARAND best | waterz best VOI |",
                  "|---|---|---|---|---|---|"]
    for r in result["fibsem"]:
        if "skipped" in r:
            lines.append(f"| skipped: {r['skipped']} | | | | | |")
            continue
        a, b = r["at_0.5"], r["best"]
        lines.append(f"| {r['model']} | {r['test']} | {a['voi']:.3f} ({a['voi_split']:.2f} / {a['voi_merge']:.2f}) "
                     f"| {b['voi']:.3f} ({b['threshold']:.2f}) | {b['arand']:.3f} | {r['waterz_best']['voi']:.3f} |")
    lines += ["", "## Leave one dataset out (2D, per section; training data resampled to the left-out dataset's "
              "pixel size)", "",
              "| left-out dataset (held-out part) | trained on | VOI @0.5 | VOI best (t) | ratio to own | "
              "waterz best VOI |", "|---|---|---|---|---|---|"]
    own = {r["left_out"]: r["best"]["voi"] for r in result["leave_one_out"]
           if "skipped" not in r and r["trained_on"].startswith("own")}
    for r in result["leave_one_out"]:
        if "skipped" in r:
            lines.append(f"| skipped: {r['skipped']} | | | | | |")
            continue
        a, b = r["at_0.5"], r["best"]
        ratio = f"{b['voi'] / own[r['left_out']]:.2f}" if r["left_out"] in own else "-"
        lines.append(f"| {r['left_out']} | {r['trained_on']} ({', '.join(r['datasets'])}) | {a['voi']:.3f} | "
                     f"{b['voi']:.3f} ({b['threshold']:.2f}) | {ratio} | {r['waterz_best']['voi']:.3f} |")
    lines += ["", "## The shipped model (models/real-em): all training parts, each at its own pixel size, plus the "
              "phantom; per section", "",
              "| model (patches per dataset) | test (held-out part) | VOI @0.5 | VOI best (t) | ARAND best | "
              "own model's VOI best | waterz best VOI |", "|---|---|---|---|---|---|---|"]
    for r in result.get("shipped", []):
        if "skipped" in r:
            lines.append(f"| skipped: {r['skipped']} | | | | | | |")
            continue
        a, b = r["at_0.5"], r["best"]
        mine = None if "," in r["test"] else own.get(r["test"].removesuffix("-test"))
        lines.append(f"| {r['model']} ({r['dataset_sampling']}) | {r['test']} | {a['voi']:.3f} | "
                     f"{b['voi']:.3f} ({b['threshold']:.2f}) | {b['arand']:.3f} | "
                     f"{'-' if mine is None else f'{mine:.3f}'} | {r['waterz_best']['voi']:.3f} |")
    lines += ["", "## The whole workflow (`config/examples`, train disabled; left-out models never saw the dataset, the shipped "
              "one saw its training sections)", "",
              "| run | model | ran to the end | minutes | dataset: VOI (split / merge) |", "|---|---|---|---|---|"]
    for r in result.get("pipeline", []):
        if "skipped" in r:
            lines.append(f"| {r['run']} | skipped: {r['skipped']} | | | |")
            continue
        scores = "; ".join(f"{k}: {v.get('segmentation.voi', float('nan')):.3f} "
                           f"({v.get('segmentation.voi_split', float('nan')):.2f} / "
                           f"{v.get('segmentation.voi_merge', float('nan')):.2f})"
                           for k, v in r.items() if isinstance(v, dict) and k != "overrides")
        lines.append(f"| {r['run']} | {Path(r['checkpoint']).name} | {'yes' if r['completed'] else 'NO'} | "
                     f"{r['seconds'] / 60:.1f} | {scores} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="folder of the real datasets")
    parser.add_argument("--only", nargs="*", help="run only these model names (e.g. fibsem-norm-aug)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", nargs="*", default=[], choices=["fibsem", "leave-one-out", "shipped", "pipeline"])
    parser.add_argument("--cores", type=int, default=2, help="snakemake cores for the whole-workflow runs")
    parser.add_argument("--runs", nargs="*", help="whole-workflow runs to do (default: all), e.g. 'isbi2012, left out'")
    parser.add_argument("--cached-only", action="store_true",
                        help="train nothing: report the models already under benchmarks/out/real_em, skip the rest")
    parser.add_argument("--extra-test", nargs="*", default=[], metavar="NAME=RAW_H5:GT_H5",
                        help="more 10 nm isotropic test volumes (HDF5 dataset 'stack' in both files)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    global CACHED_ONLY
    CACHED_ONLY = args.cached_only
    vols = real_volumes(Path(args.data))
    extra = {}
    for spec in args.extra_test:
        name, files = spec.split("=", 1)
        raw_file, gt_file = files.split(":")
        extra[name] = (_h5(raw_file), _h5(gt_file).astype(np.uint64), (10.0, 10.0, 10.0))
    result = {"fibsem": [] if "fibsem" in args.skip else fibsem(vols, args.threads, args.only, extra),
              "leave_one_out": [] if "leave-one-out" in args.skip else leave_one_out(vols, args.threads, args.only),
              "shipped": [] if "shipped" in args.skip else shipped(vols, args.threads, args.only, extra),
              "pipeline": [] if "pipeline" in args.skip else pipeline(pipeline_runs(Path(args.data)), args.cores, args.runs)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.only and not args.runs:
        (RESULTS / "real_em.json").write_text(json.dumps(result, indent=1, default=float))
        (RESULTS / "real_em.md").write_text(markdown(result))
    else:
        (OUT / "partial.json").write_text(json.dumps(result, indent=1, default=float))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
