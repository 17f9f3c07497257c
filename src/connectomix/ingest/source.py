"""A dataset's ``source:`` mapping, checked, and what probing it finds (``SourceInfo``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

FORMATS = ("auto", "tiff", "png", "jpeg", "hdf5", "zarr", "n5")
NORMALIZE = ("auto", "minmax", "percentile", "none")
SOURCE_KEYS = {"path", "format", "key", "pattern", "normalize"}
MIN_SECTIONS = 2  # a 3D pipeline (z affinities, z pyramid) needs at least two sections


@dataclass(frozen=True)
class SourceInfo:
    """What a source's headers say: ``shape`` (z, y, x), input ``dtype``, resolved ``format``, ``n_sections``."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    format: str
    n_sections: int
    path: str = ""
    key: str | None = None
    files: tuple[str, ...] = ()  # image sequences: the section files in z order
    ignored: tuple[str, ...] = ()  # image sequences: files in the folder that are not sections
    colour: bool = False  # sections carry colour/alpha samples (reduced to grey by the colour rule)


def _check_source(source: dict) -> dict:
    if not isinstance(source, dict):
        raise ValueError(f"source must be a mapping with at least 'path', got {source!r}")
    unknown = set(source) - SOURCE_KEYS
    if unknown:
        raise ValueError(f"source: unknown keys {sorted(unknown)}; allowed: {sorted(SOURCE_KEYS)}")
    if not source.get("path"):
        raise ValueError("source: 'path' is required")
    out = {"path": str(source["path"]), "format": source.get("format") or "auto",
           "key": source.get("key"), "pattern": source.get("pattern") or "*",
           "normalize": source.get("normalize") or "auto"}
    if out["format"] not in FORMATS:
        raise ValueError(f"{out['path']}: unknown source format {out['format']!r}; expected one of {FORMATS}")
    if out["normalize"] not in NORMALIZE:
        raise ValueError(f"{out['path']}: unknown normalize {out['normalize']!r}; expected one of {NORMALIZE}")
    return out


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: ``2.png`` before ``10.png``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def _where(path, key) -> str:
    return f"{path}:{key}" if key else str(path)


def _check_dtype(dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in "buif":
        raise ValueError(f"{where}: unsupported data type {dtype} (need integers, floats or booleans)")
    return dtype
