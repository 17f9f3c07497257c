"""Segmentation parameters: defaults (mirroring the `segment:` section of the config schema) and merging."""

from __future__ import annotations

from connectomix.config import merge_params

# Keep in sync with `segment:` in schemas/config.schema.yaml (tests/test_segment.py checks the two agree).
DEFAULTS: dict = {
    "halo": [4, 24, 24],
    "fragments": {
        "method": "watershed",
        "mode": "auto",
        "threshold": 0.5,
        "seeds": "distance",
        "seed_window": [1, 7, 7],
        "smooth_sigma_nm": 16.0,
        "min_size": 40,
    },
    "agglomerate": {
        "method": "mean",
        "threshold": 0.5,
        "quantile": 50,
        "mutex_bias": 0.5,
    },
    "evaluation": {
        "thresholds": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75,
                       0.8, 0.85, 0.9, 0.95],
        "ground_truth": {},
    },
}


def resolve(params: dict | None = None) -> dict:
    """The full parameter set: ``params`` (possibly partial, as in the config) over the defaults."""
    return merge_params(DEFAULTS, params, "segment", open_keys=("ground_truth",))


def fragment_mode(params: dict, voxel_size) -> str:
    """'2d' or '3d': 'auto' picks per-section 2D fragments when z voxels are >= 3x coarser than in-plane."""
    mode = params["fragments"]["mode"]
    if mode != "auto":
        return mode
    return "2d" if voxel_size[0] >= 3 * min(voxel_size[1:]) else "3d"
