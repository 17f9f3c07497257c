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
from connectomix.io import open_array, read_meta, update_attrs


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


# --- content digests: the input checksums of every output --------------------------------------------------------
#
# An array's digest is computed where it is written, never by re-reading a whole volume: each block job hashes the
# values it writes (``data_digest``), the stage's finish step combines the blocks' digests in block-id order
# (``merkle_digest``) and stores the result in the array's attributes (``connectomix.content_sha256``). Readers
# record that digest as the array's input checksum; tables and other files are hashed whole (``file_checksum``).

DIGEST_ATTR = "content_sha256"


def data_digest(values) -> str:
    """sha256 of an array's shape, dtype and values (C order)."""
    values = np.ascontiguousarray(values)
    digest = hashlib.sha256(f"{tuple(values.shape)}|{values.dtype.str}|".encode())
    digest.update(values.tobytes())
    return digest.hexdigest()


def merkle_digest(shape, dtype, parts: dict) -> str:
    """The digest of a whole array from its blocks' digests: sha256 over the shape, dtype and the sorted
    ``block id: digest`` lines. The same values written with the same blocks give the same digest."""
    lines = [f"{tuple(int(s) for s in shape)}|{np.dtype(dtype).str}"] + [f"{k}:{parts[k]}" for k in sorted(parts)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def blocks_digest(array, markers: list, name: str) -> str:
    """The digest of ``array`` from its blocks' markers (``marker["sha256"][name]``); when a marker lacks it
    (written by an older version, or the stage did not write ``name``) the array is hashed whole instead."""
    parts = {m["block"]: m.get("sha256", {}).get(name) for m in markers}
    if all(parts.values()):
        return merkle_digest(array.shape, array.dtype, parts)
    return array_checksum(array)


def set_array_digest(volume, name: str, digest: str) -> None:
    """Record ``digest`` as the content checksum of the array ``name`` in ``volume``."""
    update_attrs(volume, name, **{DIGEST_ATTR: digest})


def array_digest(volume, name: str) -> str:
    """The recorded content checksum of an array; one written without it (by an older version or another tool) is
    hashed whole, which reads it once (not recorded: other jobs may be reading the attributes)."""
    recorded = read_meta(volume, name).attrs.get(DIGEST_ATTR)
    return str(recorded) if recorded else array_checksum(open_array(volume, name))


def input_digests(volume=None, arrays=(), files: dict | None = None) -> dict:
    """``{name: sha256}`` for arrays of ``volume`` (by array name) and files (``{name: path}``, absent ones skipped)."""
    out = {name: array_digest(volume, name) for name in arrays}
    for name, path in (files or {}).items():
        if path and Path(path).exists():
            out[name] = file_checksum(path)
    return out
