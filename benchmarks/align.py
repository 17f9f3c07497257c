"""Serial-section alignment (connectomix.align): residual misalignment on the phantom and on real EM with a known
synthetic misalignment, throughput, before/after montages.

    python benchmarks/align.py                                   # everything below (~10 min on 2 cores)
    python benchmarks/align.py --metrics-before B.json --metrics-after A.json   # add the demo's segmentation rows

* **Phantom**: config.yaml's phantom (seed 7 with its misalignment and defects), aligned with the schema's `align`
  defaults; residuals against the true transforms (connectomix.evaluate.align), before and after.
* **Real EM**: vnc-sstem (its 12 sections, cropped to 512 x 512) and isbi2012 (30 sections, 512 x 512), PNG/TIFF stacks
  aligned by their providers, misaligned here by connectomix.phantom.defects (the demo's amounts: 2 px random-walk
  steps, 1 px jitter, 0.2 degree rotations, 1.5 px elastic; no missing sections), then aligned; residuals against
  that known misalignment (in pixels; the datasets' own voxel sizes do not matter here).
* **Throughput**: estimate (setup) and render (blocks) on synthetic stacks of 4 sizes, Mvoxel/s.
* **Segmentation** (optional): the demo's eval/metrics.json of a run on the never-misaligned phantom and of a run
  on the misaligned phantom with align (same tissue, seed 7).

Not done: a comparison with feabas or sofima (on PyPI, not installed here).
Writes results/align.json, results/align.md and results/align_montage_{phantom,vnc,isbi}.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from connectomix.align import core
from connectomix.align.blockwise import resolve
from connectomix.evaluate.align import evaluate
from connectomix.phantom import PhantomParams, defects

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = Path(os.environ.get("CONNECTOMIX_DATA", ROOT.parent / "shared" / "data"))
if not DATA.exists():
    DATA = Path("/work/shared/data")
VS = (40.0, 8.0, 8.0)
MISALIGN = {"misalign_step_nm": 16.0, "misalign_jitter_nm": 8.0, "misalign_rotation_deg": 0.2,
            "misalign_scale": 0.002, "elastic_nm": 12.0, "elastic_length_nm": 400.0}


def run_alignment(raw: np.ndarray, params: dict) -> tuple[dict, float, np.ndarray, float]:
    """(estimate, seconds, aligned stack, render seconds)."""
    start = time.perf_counter()
    est = core.estimate(lambda z: raw[z], raw.shape[0], params)
    seconds = time.perf_counter() - start
    gain, bias = core.intensity(est["stats"], est["status"], params["equalize_contrast"])
    transforms = {"mesh": est["mesh"], "status": est["status"], "gain": gain, "bias": bias}
    start = time.perf_counter()
    aligned, _ = core.render(raw, transforms, 0, raw.shape[0], 0, raw.shape[1], 0, raw.shape[2])
    return est, seconds, aligned, time.perf_counter() - start


def score(est, raw_shape, points, truth_sections) -> dict:
    found = pd.DataFrame({"z": range(len(est["status"])), "status": est["status"]})
    return evaluate(est["mesh"], raw_shape[1:], points, truth_sections, found, VS)


def montage(raw, aligned, path, title, y=None):
    """x-z views (one row of every section) and one section, before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = raw.shape[1] // 2 if y is None else y
    fig, axes = plt.subplots(2, 2, figsize=(14, 8), gridspec_kw={"height_ratios": [1, 2.5]})
    aspect = VS[0] / VS[2] / 2
    for col, (name, vol) in enumerate((("raw (misaligned)", raw), ("aligned", aligned))):
        axes[0, col].imshow(vol[:, y, :], cmap="gray", vmin=0, vmax=255, aspect=aspect, interpolation="nearest")
        axes[0, col].set_title(f"{name}: x-z at y={y}")
        z = raw.shape[0] // 2
        axes[1, col].imshow(np.abs(vol[z].astype(int) - vol[z + 1].astype(int)), cmap="magma", vmin=0, vmax=120,
                            interpolation="nearest")
        axes[1, col].set_title(f"{name}: |section {z} - section {z + 1}|")
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def phantom_case(params) -> dict:
    from connectomix.phantom import generate

    spec = yaml.safe_load((ROOT / "config.yaml").read_text())["datasets"]["phantom"]["phantom"]
    start = time.perf_counter()
    ph = generate(PhantomParams.from_dict(spec), voxel_size=VS)
    gen = time.perf_counter() - start
    est, seconds, aligned, render_s = run_alignment(ph.raw, params)
    metrics = score(est, ph.raw.shape, ph.misalignment["points"], ph.misalignment["sections"])
    montage(ph.raw, aligned, HERE / "results" / "align_montage_phantom.png",
            "phantom (config.yaml): misaligned raw vs aligned")
    return {"shape": list(ph.raw.shape), "phantom": spec, "generate_seconds": round(gen, 1),
            "estimate_seconds": round(seconds, 1), "render_seconds": round(render_s, 2),
            "sections": {s: [int(z) for z in np.flatnonzero(est["status"] == s)] for s in ("missing", "blank",
                                                                                           "low_contrast")},
            "truth_sections": {k: int(v) for k, v in ph.misalignment["sections"].status.value_counts().items()},
            **metrics}


def read_stack(folder: Path, n: int, crop: int) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))[:n]
    return np.stack([np.asarray(Image.open(p).convert("L"))[:crop, :crop] for p in files])


def real_case(name: str, folder: Path, n: int, crop: int, params) -> dict:
    if not folder.exists():
        return {"skipped": f"{folder} not found"}
    clean = read_stack(folder, n, crop)
    p = PhantomParams.from_dict({**MISALIGN, "seed": 11, "shape": list(clean.shape)})
    raw, mask, drawn, elastic = defects.apply(clean, p, VS)
    sections, points = defects.truth_tables(drawn, elastic, mask, p, VS)
    est, seconds, aligned, render_s = run_alignment(raw, params)
    metrics = score(est, raw.shape, points, sections)
    montage(raw, aligned, HERE / "results" / f"align_montage_{name}.png",
            f"{name} ({folder}), synthetic misalignment: misaligned vs aligned")
    px = {k.replace("_nm", "_px"): round(v / VS[1], 3) for k, v in metrics.items() if k.endswith("_nm")}
    return {"source": str(folder), "shape": list(raw.shape), "estimate_seconds": round(seconds, 1),
            "render_seconds": round(render_s, 2), "false_defect_sections": metrics["false_defect_sections"], **px}


def throughput(params) -> list[dict]:
    from scipy import ndimage

    rows = []
    for shape in ((8, 128, 128), (16, 256, 256), (32, 256, 256), (16, 512, 512)):
        rng = np.random.default_rng(0)
        base = ndimage.gaussian_filter(rng.normal(size=shape[1:]), 2.0)
        shifts = np.cumsum(rng.normal(0, 2, (shape[0], 2)), axis=0)
        raw = np.stack([np.clip(128 + 40 * ndimage.shift(base, s, order=1) / base.std()
                                + rng.normal(0, 3, shape[1:]), 0, 255) for s in shifts]).astype(np.uint8)
        est, seconds, _, render_s = run_alignment(raw, params)
        mvox = float(np.prod(shape)) / 1e6
        rows.append({"shape": list(shape), "mvoxels": round(mvox, 2), "estimate_seconds": round(seconds, 2),
                     "render_seconds": round(render_s, 2), "estimate_mvoxel_per_s": round(mvox / seconds, 3),
                     "render_mvoxel_per_s": round(mvox / render_s, 2),
                     "total_mvoxel_per_s": round(mvox / (seconds + render_s), 3),
                     "matches": int(len(est["matches"]))})
    return rows


def segmentation_rows(before: str | None, after: str | None) -> dict:
    if not (before and after):
        return {}
    b, a = json.loads(Path(before).read_text()), json.loads(Path(after).read_text())
    keys = [k for k in sorted(b) if k in a and k.split(".")[0] in ("segmentation", "skeletons", "synapses",
                                                                    "connectome")]
    return {"before": before, "after": after, "rows": {k: {"never_misaligned": b[k], "misaligned_aligned": a[k]}
                                                        for k in keys},
            "align_metrics": {k: v for k, v in a.items() if k.startswith("align.")}}


def markdown(out: dict) -> str:
    ph = out["phantom"]
    lines = ["# Serial-section alignment (connectomix.align)", "",
             f"`python benchmarks/align.py` on {out['machine']}; the schema's `align` defaults: "
             f"`{json.dumps(out['params'])}`.", "",
             "## Residual misalignment (against the true transforms, stack translation removed)", "",
             "| data | shape | median before | p95 before | median after | p95 after | neighbour median after | "
             "neighbour p95 after | estimate s |", "|---|---|---|---|---|---|---|---|---|",
             f"| phantom (nm) | {ph['shape']} | {ph['residual_before_median_nm']:.1f} | "
             f"{ph['residual_before_p95_nm']:.1f} | {ph['residual_median_nm']:.1f} | {ph['residual_p95_nm']:.1f} | "
             f"{ph['neighbour_residual_median_nm']:.1f} | {ph['neighbour_residual_p95_nm']:.1f} | "
             f"{ph['estimate_seconds']} |",
             f"| phantom (px of 8 nm) | | {ph['residual_before_median_nm'] / 8:.2f} | "
             f"{ph['residual_before_p95_nm'] / 8:.2f} | {ph['residual_median_nm'] / 8:.2f} | "
             f"{ph['residual_p95_nm'] / 8:.2f} | {ph['neighbour_residual_median_nm'] / 8:.2f} | "
             f"{ph['neighbour_residual_p95_nm'] / 8:.2f} | |"]
    for name in ("vnc", "isbi"):
        r = out["real"][name]
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | | | |")
            continue
        lines.append(f"| {name} (px) | {r['shape']} | {r['residual_before_median_px']:.2f} | "
                     f"{r['residual_before_p95_px']:.2f} | {r['residual_median_px']:.2f} | {r['residual_p95_px']:.2f} |"
                     f" {r['neighbour_residual_median_px']:.2f} | {r['neighbour_residual_p95_px']:.2f} | "
                     f"{r['estimate_seconds']} |")
    lines += ["", f"Phantom defects: true {ph['truth_sections']}, detected {ph['sections']} "
                  f"(found {ph['defect_sections_found']:.0%} of the missing/blank/low-contrast sections, "
                  f"{ph['false_defect_sections']} false). Goal on the phantom: median <= 1 px, p95 <= 2 px.", "",
              "## Throughput (synthetic stacks, one process, 1 thread)", "",
              "| shape | Mvoxel | estimate s | render s | estimate Mvoxel/s | render Mvoxel/s | total Mvoxel/s |",
              "|---|---|---|---|---|---|---|"]
    for r in out["throughput"]:
        lines.append(f"| {r['shape']} | {r['mvoxels']} | {r['estimate_seconds']} | {r['render_seconds']} | "
                     f"{r['estimate_mvoxel_per_s']} | {r['render_mvoxel_per_s']} | {r['total_mvoxel_per_s']} |")
    seg = out.get("segmentation")
    if seg:
        lines += ["", "## Demo segmentation: never-misaligned phantom vs misaligned phantom + align (seed 7)", "",
                  "| metric | never misaligned | misaligned, aligned |", "|---|---|---|"]
        for k, v in seg["rows"].items():
            if isinstance(v["never_misaligned"], (int, float)):
                lines.append(f"| {k} | {v['never_misaligned']:.4g} | {v['misaligned_aligned']:.4g} |")
    lines += ["", "Montages: results/align_montage_{phantom,vnc,isbi}.png (x-z views and section differences).",
              "Not done: a comparison with feabas / sofima (on PyPI, not installed)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics-before", help="eval/metrics.json of a demo run on the never-misaligned phantom")
    parser.add_argument("--metrics-after", help="eval/metrics.json of the demo run with misalignment + align")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)
    params = resolve({})
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "params": params}
    out["phantom"] = phantom_case(params)
    out["real"] = {"vnc": real_case("vnc", DATA / "vnc-sstem" / "raw", 20, 512, params),
                   "isbi": real_case("isbi", DATA / "isbi2012" / "image", 30, 512, params)}
    out["throughput"] = [] if args.skip_throughput else throughput(params)
    out["segmentation"] = segmentation_rows(args.metrics_before, args.metrics_after)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "align.json").write_text(json.dumps(out, indent=1, default=float))
    (HERE / "results" / "align.md").write_text(markdown(out))
    print(markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
