"""Segmentation parameters: the `segment:` config section (defaults in the config schema) and helpers."""

from __future__ import annotations

from connectomix import config


def resolve(params: dict | None = None) -> dict:
    """The full parameter set: ``params`` (possibly partial, as in the config) over the schema's defaults."""
    return config.resolve("segment", params)


def fragment_mode(params: dict, voxel_size) -> str:
    """'2d' or '3d': 'auto' picks per-section 2D fragments when z voxels are >= 3x coarser than in-plane."""
    mode = params["fragments"]["mode"]
    if mode != "auto":
        return mode
    return "2d" if voxel_size[0] >= 3 * min(voxel_size[1:]) else "3d"
