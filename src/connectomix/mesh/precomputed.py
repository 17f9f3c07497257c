"""Neuroglancer precomputed legacy meshes (``neuroglancer_legacy_mesh``): one fragment per segment.

Layout of the ``mesh`` folder of a precomputed segmentation (its info names it: ``"mesh": "mesh"``): ``info``,
then per segment a manifest ``{id}:0`` (JSON ``{"fragments": ["{id}:0:0"]}``) and the fragment ``{id}:0:0``
(little-endian uint32 vertex count, float32 vertices x y z in nm, uint32 triangle indices). Uncompressed files,
so any static file server works; read back with ``CloudVolume(...).mesh.get(id)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

INFO = {"@type": "neuroglancer_legacy_mesh"}


def fragment_bytes(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """One legacy mesh fragment."""
    return (np.uint32(len(vertices)).astype("<u4").tobytes() + np.asarray(vertices, "<f4").tobytes()
            + np.asarray(faces, "<u4").tobytes())


def read_fragment(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (n, 3) float32, faces (m, 3) uint32) of a legacy fragment."""
    n = int(np.frombuffer(data[:4], "<u4")[0])
    vertices = np.frombuffer(data[4:4 + 12 * n], "<f4").reshape(-1, 3)
    return vertices, np.frombuffer(data[4 + 12 * n:], "<u4").reshape(-1, 3)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def name_in_info(folder, key: str = "mesh") -> bool:
    """Make the precomputed segmentation's info (in the parent folder of ``folder``) name ``folder`` under ``key``
    (``mesh``, ``segment_properties``), when it exists and names none (an info written before); True when it
    changed."""
    folder = Path(folder)
    path = folder.parent / "info"
    if not path.exists():
        return False
    info = json.loads(path.read_text())
    if info.get(key):
        return False
    info[key] = folder.name
    _write(path, json.dumps(info, indent=2).encode())
    return True


def write_legacy(meshes: dict, out_dir) -> int:
    """Write {label: (vertices nm (x, y, z), faces)} into ``out_dir`` (info last); returns the bytes written. Files
    of segments no longer meshed are removed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "info").unlink(missing_ok=True)
    keep = set()
    total = 0
    for label, (vertices, faces) in meshes.items():
        data = fragment_bytes(vertices, faces)
        _write(out / f"{label}:0:0", data)
        _write(out / f"{label}:0", json.dumps({"fragments": [f"{label}:0:0"]}).encode())
        keep |= {f"{label}:0", f"{label}:0:0"}
        total += len(data)
    for stale in out.iterdir():
        if stale.name != "info" and stale.name not in keep:
            stale.unlink()
    _write(out / "info", json.dumps(INFO).encode())
    return total
