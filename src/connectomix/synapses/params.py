"""Synapse parameters: the `synapses:` config section (defaults in the config schema), checked; the halos of the
block passes that follow from them."""

from __future__ import annotations

import math

from connectomix import config
from connectomix.synapses.partners import FACE_DEPTH


def resolve(params: dict | None = None) -> dict:
    """The full parameter set: ``params`` (possibly partial, as in the config) over the schema's defaults."""
    params = config.resolve("synapses", params)
    if params["connectivity"] not in (6, 18, 26):
        raise ValueError(f"synapses.connectivity must be 6, 18 or 26, got {params['connectivity']}")
    if params["polarity"] not in ("absolute", "relative"):
        raise ValueError(f"synapses.polarity must be 'absolute' or 'relative', got {params['polarity']!r}")
    if params["pairing"] not in ("interface", "candidates", "model"):
        raise ValueError(f"synapses.pairing must be 'interface', 'candidates' or 'model', got {params['pairing']!r}")
    if not 0 <= params["interface_nm"] <= params["partner_radius_nm"]:
        raise ValueError(f"synapses.interface_nm = {params['interface_nm']}: must lie in 0..partner_radius_nm "
                         f"({params['partner_radius_nm']})")
    return params


def cleft_halo(params: dict, voxel_size) -> tuple[int, int, int]:
    """Halo (voxels) of the cleft block jobs: 3 sigma of the optional smoothing (at least 1 for face reads)."""
    sigma = params["smooth_sigma_nm"]
    return tuple(max(1, math.ceil(3 * sigma / v)) if sigma > 0 else 0 for v in voxel_size)  # type: ignore


def partner_halo(params: dict, voxel_size) -> tuple[int, int, int]:
    """Halo (voxels) of the partner pass: the partner radius, plus one voxel for the surface-area faces; at least
    the depth to which contacts are read on each side (``partners.FACE_DEPTH``)."""
    return tuple(max(math.ceil(params["partner_radius_nm"] / v) + 1, FACE_DEPTH)  # type: ignore
                 for v in voxel_size)

