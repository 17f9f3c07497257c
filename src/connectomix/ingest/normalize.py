"""How input values become uint8: planned once per dataset from a strided sample, applied slab by slab."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from connectomix.ingest.source import SourceInfo

PERCENTILES = (0.1, 99.9)
SAMPLE_SECTIONS = 16  # sections read (evenly spaced, first and last included) to plan the normalization
SAMPLE_PIXELS = 1 << 18  # at most this many pixels kept per sampled section (strided in y and x)
SAMPLE_VOXELS = 1 << 20  # at most this many voxels in the whole sample (bounds the first pass's memory)


@dataclass
class Normalization:
    """The mapping input -> uint8: ``method`` and, for linear maps, ``lo`` -> 0 and ``hi`` -> 255.

    Linear: ``out = clip(rint((x - lo) * 255 / (hi - lo)), 0, 255)``; values outside [lo, hi] saturate (counted).
    """

    method: str  # identity | bool | none | minmax | percentile
    dtype_in: str
    lo: float | None = None
    hi: float | None = None
    sample: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"method": self.method, "dtype_in": self.dtype_in, "lo": self.lo, "hi": self.hi,
                "formula": self.formula, "sample": self.sample}

    @property
    def formula(self) -> str:
        if self.method in ("minmax", "percentile"):
            return "clip(rint((x - lo) * 255 / (hi - lo)), 0, 255)"
        return {"identity": "x", "bool": "255 * x", "none": "x (values must be integers in 0..255)"}[self.method]

    def apply(self, block: np.ndarray, where: str) -> tuple[np.ndarray, int]:
        """The uint8 block and how many voxels were clipped (outside [lo, hi])."""
        if self.method == "identity":
            return block, 0
        if self.method == "bool":
            return block.astype(np.uint8) * np.uint8(255), 0
        if self.method == "none":
            lo, hi = block.min(), block.max()
            if lo < 0 or hi > 255 or (block.dtype.kind == "f" and not np.array_equal(block, np.rint(block))):
                raise ValueError(f"{where}: normalize 'none' needs integer values in 0..255, found "
                                 f"{lo}..{hi} ({block.dtype}); use normalize auto, minmax or percentile")
            return block.astype(np.uint8), 0
        x = block.astype(np.float32)
        clipped = int(np.count_nonzero((x < self.lo) | (x > self.hi)))
        x -= np.float32(self.lo)
        x *= np.float32(255.0 / (self.hi - self.lo))
        np.rint(x, out=x)
        np.clip(x, 0, 255, out=x)
        return x.astype(np.uint8), clipped


def _check_finite(block: np.ndarray, where_of, z0: int) -> None:
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        bad = np.flatnonzero(~np.isfinite(block).reshape(block.shape[0], -1).all(axis=1))[0]
        what = "NaN" if np.isnan(block[bad]).any() else "infinite"
        raise ValueError(f"{where_of(z0 + int(bad))}: contains {what} values; EM sections must be finite")


def sample_sections(z0: int, z1: int, n: int = SAMPLE_SECTIONS) -> list[int]:
    """Up to ``n`` section indices evenly spaced over [z0, z1), first and last included."""
    return sorted({int(round(z)) for z in np.linspace(z0, z1 - 1, min(n, z1 - z0))})


def plan_normalization(reader, info: SourceInfo, roi, method: str = "auto") -> Normalization:
    """Choose the input -> uint8 mapping from a first pass over a strided sample of the (cropped) volume.

    * ``auto``: uint8 unchanged; boolean -> 0/255; any other dtype as ``percentile``.
    * ``percentile``: the 0.1 and 99.9 percentiles of the sample map to 0 and 255 (robust to hot pixels).
    * ``minmax``: the sample's min and max map to 0 and 255.
    * ``none``: no scaling; every value must be an integer in 0..255 (checked on every slab), else an error.

    The sample: ``SAMPLE_SECTIONS`` (16) sections evenly spaced over the ROI's z range (all when fewer), each
    cropped to the ROI and strided in y and x (the same stride s on both axes, the smallest with at most
    min(``SAMPLE_PIXELS`` = 262144, ``SAMPLE_VOXELS`` / n_sampled = 1048576 / n) pixels kept); never one section
    alone, and at most ~1 M voxels in all, so the first pass's memory does not grow with the volume. Values beyond the sampled range saturate at 0/255 and are counted in the summary (``clipped``).
    If hi == lo (a constant sample), hi = lo + 1. NaN/inf anywhere in the sample is an error.
    """
    dtype = np.dtype(info.dtype)
    if method == "auto":
        method = "identity" if dtype == np.uint8 else "bool" if dtype == np.bool_ else "percentile"
    elif method == "none":
        method = "identity" if dtype == np.uint8 else "bool" if dtype == np.bool_ else "none"
    elif dtype == np.bool_:
        method = "bool"
    if method in ("identity", "bool", "none"):
        return Normalization(method, str(dtype))
    zs = sample_sections(roi.offset[0], roi.end[0])
    ny, nx = roi.shape[1], roi.shape[2]
    per_section = min(SAMPLE_PIXELS, SAMPLE_VOXELS // len(zs))
    stride = max(1, math.ceil(math.sqrt(ny * nx / per_section)))
    ys = slice(roi.offset[1], roi.end[1])
    xs = slice(roi.offset[2], roi.end[2])
    parts = []
    for z in zs:
        section = reader.read(z, z + 1, ys, xs)
        _check_finite(section, reader.where, z)
        parts.append(section[0, ::stride, ::stride].ravel())
    values = np.concatenate(parts)
    if method == "percentile":
        lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    else:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    sample = {"sections": zs, "stride_yx": stride, "voxels": int(values.size)}
    if method == "percentile":
        sample["percentiles"] = list(PERCENTILES)
    return Normalization(method, str(dtype), lo, hi, sample)
