"""Provenance: the connectomix version, config subsets and input checksums every output records."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np

from connectomix import __version__


@functools.lru_cache(maxsize=1)
def version() -> str:
    """``git describe`` of the source checkout when there is one, else the package version."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{__version__}+g{out}" if out else __version__
    except (OSError, subprocess.SubprocessError):
        return __version__


def config_hash(config: dict) -> str:
    """A stable hash of a (sub)config: sorted-key JSON, sha256, first 16 hex digits."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_checksum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def array_checksum(array, block_shape=None) -> str:
    """sha256 over an array's shape, dtype and values, read chunk by chunk in C order (zarr or numpy)."""
    digest = hashlib.sha256(f"{tuple(array.shape)}|{np.dtype(array.dtype).str}".encode())
    chunks = block_shape or getattr(array, "chunks", None) or array.shape
    ranges = [range(0, s, c) for s, c in zip(array.shape, chunks)]
    import itertools

    for start in itertools.product(*ranges):
        sl = tuple(slice(a, a + c) for a, c in zip(start, chunks))
        digest.update(np.ascontiguousarray(array[sl]).tobytes())
    return digest.hexdigest()


def record(config: dict | None = None, inputs: dict | None = None) -> dict:
    """The provenance block stored with an output."""
    return {
        "connectomix_version": version(),
        "config": config or {},
        "config_hash": config_hash(config or {}),
        "inputs": inputs or {},
    }
