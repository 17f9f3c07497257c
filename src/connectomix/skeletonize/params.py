"""Skeletonization parameters: defaults (mirroring the `skeletonize:` section of the config schema) and merging."""

from __future__ import annotations

from connectomix.config import merge_params

# Keep in sync with `skeletonize:` in schemas/config.schema.yaml (tests/test_skeletonize.py checks the two agree).
DEFAULTS: dict = {
    "halo": [4, 32, 32],
    "teasar": {
        "scale": 1.5,
        "const": 300.0,
        "pdrf_scale": 100000.0,
        "pdrf_exponent": 4,
        "soma_detection_threshold": 750.0,
        "soma_acceptance_threshold": 3500.0,
        "soma_invalidation_scale": 2.0,
        "soma_invalidation_const": 300.0,
    },
    "fix_branching": True,
    "dust_threshold": 100,
    "min_segment_voxels": 1000,
    "face_match_distance_nm": 400.0,
    "join_distance_nm": 1000.0,
    "tick_threshold_nm": 300.0,
    "smooth": {
        "iterations": 4,
        "max_edge_nm": 100.0,
    },
    "axon_dendrite": {
        "method": "radius",
        "min_axon_cable_nm": 2000.0,
    },
    "soma_shape": {
        "test_from": 0.93,
        "test_to": 1.2,
        "ridge_fraction": 0.8,
        "max_elongation": 0.9,
    },
    "soma_body": {
        "opening_fraction": 0.6,
        "max_centroid_shift": 0.5,
        "voxels_per_radius": 12.0,
        "crop_radii": 2.0,
    },
}


class _Resolved(dict):
    """A parameter set ``resolve`` has completed: resolving it again returns it as it is (the merge calls
    ``resolve`` for every segment, several times; a deep copy of the defaults each time adds up)."""


def resolve(params: dict | None = None) -> dict:
    """The full parameter set: ``params`` (possibly partial, as in the config) over the defaults."""
    if isinstance(params, _Resolved):
        return params
    return _Resolved(merge_params(DEFAULTS, params, "skeletonize"))
