"""How EM-like is the phantom? Image statistics of the default phantom against real EM with membrane labels.

    python benchmarks/phantom_realism.py

Real data (read-only, from ../shared/data beside the repository; skipped with a message when absent):
isbi2012 (ssTEM, 4 nm pixels, membrane labels), vnc-sstem (ssTEM, 4.6 nm, membrane masks), gala-fibsem
(FIB-SEM, 10 nm, boundary = label 0). Every real section is first resampled to the phantom's in-plane pixel size
(8 nm), so per-pixel statistics (noise, spectrum, object areas) compare like with like.

Statistics per dataset (over all its sections): grey-level mean, std, 5th/95th percentiles and histogram
intersection with the phantom; membrane/cytoplasm contrast (mean grey on membrane over mean grey off it);
noise (robust std of the residual after a 3x3 median filter); slope of the radially averaged power spectrum
(log-log, wavelengths 32-512 nm); object sizes (2D 4-connected components of non-membrane pixels: median area
and count per µm²). Each is reported with the ratio phantom / real. Writes results/phantom_realism.{json,md}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
RESULTS = HERE / "results"
PIXEL_NM = 8.0
BINS = np.arange(257)
MIN_OBJECT_PX = 4  # components smaller than this are noise in the labels, not objects


def _resample(image: np.ndarray, pixel_nm: float, order: int) -> np.ndarray:
    factor = pixel_nm / PIXEL_NM
    if abs(factor - 1) < 1e-6:
        return image
    if factor < 1 and order > 0:  # downsampling: low-pass first (anti-aliasing)
        image = ndimage.gaussian_filter(image.astype(np.float32), 0.5 / factor)
    return ndimage.zoom(image.astype(np.float32), factor, order=order)


def _psd_slope(image: np.ndarray) -> float:
    """Slope of log power against log spatial frequency (radial average), wavelengths 4-64 pixels."""
    img = image.astype(np.float64) - image.mean()
    window = np.outer(np.hanning(img.shape[0]), np.hanning(img.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2(img * window))) ** 2
    fy = np.fft.fftshift(np.fft.fftfreq(img.shape[0]))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(img.shape[1]))[None, :]
    radius = np.hypot(fy, fx)
    edges = np.geomspace(1 / 64, 1 / 4, 13)
    which = np.digitize(radius.ravel(), edges)
    means = ndimage.mean(power.ravel(), which, np.arange(1, len(edges)))
    centres = np.sqrt(edges[:-1] * edges[1:])
    return float(np.polyfit(np.log(centres), np.log(means), 1)[0])


def section_stats(sections: list[np.ndarray], membranes: list[np.ndarray]) -> dict:
    """Statistics over 2D sections (uint8-like grey values at PIXEL_NM) with boolean membrane masks."""
    grey = np.concatenate([s.ravel() for s in sections]).astype(np.float64)
    hist = np.bincount(np.clip(np.rint(grey), 0, 255).astype(int), minlength=256) / grey.size
    mem = np.concatenate([m.ravel() for m in membranes])
    noise, slopes, areas, counts = [], [], [], []
    for image, membrane in zip(sections, membranes):
        image = image.astype(np.float32)
        residual = image - ndimage.median_filter(image, size=3)
        noise.append(1.4826 * np.median(np.abs(residual - np.median(residual))))
        slopes.append(_psd_slope(image))
        cc, n = ndimage.label(~membrane)
        size = np.bincount(cc.ravel())[1:]
        size = size[size >= MIN_OBJECT_PX]
        areas.append(size * PIXEL_NM**2)
        counts.append(len(size) / (membrane.size * PIXEL_NM**2 / 1e6))
    areas = np.concatenate(areas)
    return {
        "sections": len(sections),
        "pixels": int(grey.size),
        "mean": float(grey.mean()),
        "std": float(grey.std()),
        "p05": float(np.percentile(grey, 5)),
        "p95": float(np.percentile(grey, 95)),
        "histogram": hist,
        "membrane_fraction": float(mem.mean()),
        "membrane_contrast": float(grey[mem].mean() / grey[~mem].mean()),
        "noise_std": float(np.median(noise)),
        "psd_slope": float(np.median(slopes)),
        "object_median_area_nm2": float(np.median(areas)),
        "objects_per_um2": float(np.mean(counts)),
    }


def phantom_sections(seed: int = 0):
    from connectomix.phantom import PhantomParams, generate

    start = time.perf_counter()
    ph = generate(PhantomParams.from_dict({"seed": seed}), voxel_size=(40, PIXEL_NM, PIXEL_NM))
    print(f"phantom generated in {time.perf_counter() - start:.1f} s", flush=True)
    labels = ph.labels
    membrane = np.zeros(labels.shape, bool)
    for axis in (1, 2):  # label borders, both sides (2 px), as the real masks mark membranes
        diff = np.diff(labels, axis=axis) != 0
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        membrane[tuple(lo)] |= diff
        membrane[tuple(hi)] |= diff
    membrane |= labels == 0
    return list(ph.raw), list(membrane), ph.stats


def isbi_sections():
    import imageio.v3 as iio

    folder = DATA / "isbi2012"
    images, masks = [], []
    for path in sorted((folder / "image").glob("*.png")):
        images.append(_resample(iio.imread(path), 4.0, 1))
        masks.append(_resample((iio.imread(folder / "label" / path.name) == 0).astype(np.float32), 4.0, 1) > 0.5)
    return images, masks


def vnc_sections():
    import imageio.v3 as iio

    folder = DATA / "vnc-sstem"
    images, masks = [], []
    for path in sorted((folder / "raw").glob("*.tif")):
        images.append(_resample(iio.imread(path), 4.6, 1))
        masks.append(_resample((iio.imread(folder / "membranes" / f"{path.stem}.png") > 0).astype(np.float32),
                               4.6, 1) > 0.5)
    return images, masks


def gala_sections():
    import h5py

    folder = DATA / "gala-fibsem"
    with h5py.File(folder / "train-image.h5", "r") as f:
        stack = f["stack"][...]
    with h5py.File(folder / "train-gt.lzf.h5", "r") as f:
        gt = f["stack"][...]
    images = [_resample(s, 10.0, 1) for s in stack]
    masks = [_resample((g == 0).astype(np.float32), 10.0, 1) > 0.5 for g in gt]
    return images, masks


REAL = {"isbi2012": isbi_sections, "vnc-sstem": vnc_sections, "gala-fibsem": gala_sections}
ROWS = [
    ("mean", "grey mean"), ("std", "grey std"), ("p05", "grey 5th percentile"), ("p95", "grey 95th percentile"),
    ("membrane_contrast", "membrane / cytoplasm grey"), ("membrane_fraction", "membrane pixel fraction"),
    ("noise_std", "noise (robust std of high-pass)"), ("psd_slope", "power-spectrum slope"),
    ("object_median_area_nm2", "median object area (nm²)"), ("objects_per_um2", "objects per µm²"),
]


def main() -> int:
    if not DATA.is_dir():
        print(f"real EM data not found at {DATA} (a fresh clone has no ../shared): skipping the realism benchmark")
        return 0
    sections, membranes, phantom_stats = phantom_sections()
    results = {"phantom": section_stats(sections, membranes)}
    for name, loader in REAL.items():
        try:
            images, masks = loader()
        except (OSError, KeyError) as error:
            print(f"{name}: skipped ({error})")
            continue
        results[name] = section_stats(images, masks)
    ph = results["phantom"]
    real = [name for name in REAL if name in results]
    table, within = {}, []
    for key, _ in ROWS:
        table[key] = {"phantom": ph[key]}
        for name in real:
            ratio = ph[key] / results[name][key] if results[name][key] else float("nan")
            table[key][name] = {"real": results[name][key], "ratio": ratio}
            within.append(0.5 <= ratio <= 2.0)
    intersection = {name: float(np.minimum(ph["histogram"], results[name]["histogram"]).sum()) for name in real}
    summary = {
        "pixel_nm": PIXEL_NM,
        "table": table,
        "histogram_intersection": intersection,
        "ratios_within_2x": f"{sum(within)}/{len(within)}",
        "phantom_generation_stats": phantom_stats,
        "datasets": {k: {s: v for s, v in r.items() if s != "histogram"} for k, r in results.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "phantom_realism.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    head = "| statistic | phantom | " + " | ".join(f"{n} | ratio" for n in real) + " |"
    lines = ["# Phantom realism: default phantom vs real EM", "",
             f"All images resampled to {PIXEL_NM:g} nm pixels. Ratio = phantom / real; target 0.5-2.", "",
             head, "|" + "---|" * (2 + 2 * len(real))]
    for key, label in ROWS:
        cells = [f"{table[key][n]['real']:.4g} | {table[key][n]['ratio']:.2f}" for n in real]
        lines.append(f"| {label} | {ph[key]:.4g} | " + " | ".join(cells) + " |")
    lines.append("| grey histogram intersection (1 = identical) | 1 | "
                 + " | ".join(f"{intersection[n]:.2f} | -" for n in real) + " |")
    lines += ["", f"Ratios within 2x: {summary['ratios_within_2x']}."]
    (RESULTS / "phantom_realism.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
