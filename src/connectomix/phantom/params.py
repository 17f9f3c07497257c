"""Parameters of the phantom tissue block: one flat, validated dataclass.

Lengths are in nanometres (``_nm``) and independent of the voxel size, which ``generate`` takes separately;
``shape`` is in voxels (z, y, x). ``$defs/phantom`` of the config schema documents the same keys and defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class PhantomParams:
    """Everything that shapes a phantom; the same params (seed included) give the same phantom."""

    seed: int = 0
    shape: tuple = (48, 320, 320)
    # neurons
    n_neurons: int = 32
    inhibitory_fraction: float = 0.3
    soma_radius_nm: float = 260.0
    dendrite_radius_nm: float = 56.0
    dendrite_length_nm: float = 1400.0
    axon_radius_nm: float = 14.0
    axon_length_nm: float = 4500.0
    # neuropil packing
    filler_coverage: float = 0.78
    bundle_fraction: float = 0.15
    ecs_fraction: float = 0.05
    # synapses and wiring
    n_synapses: int = 60
    n_orphan_synapses: int = 60
    like_to_like: float = 2.0
    # image formation
    mito_density: float = 0.8
    membrane_contrast: float = 0.6
    faint_membrane_fraction: float = 0.15
    noise_sigma: float = 7.0
    blur_sigma_px: float = 0.8
    section_jitter: float = 0.06
    # function and two-photon imaging
    n_orientations: int = 8
    n_trials: int = 10
    imaged_fraction: float = 0.85
    extra_rois: int = 4
    roi_jitter_um: float = 0.03
    response_noise: float = 0.15
    # serial-section misalignment and defects of raw (connectomix.phantom.defects); ground truth stays aligned
    misalign_step_nm: float = 0.0
    misalign_jitter_nm: float = 0.0
    misalign_rotation_deg: float = 0.0
    misalign_scale: float = 0.0
    elastic_nm: float = 0.0
    elastic_length_nm: float = 800.0
    missing_sections: int = 0
    blank_sections: int = 0
    low_contrast_sections: int = 0
    low_contrast_factor: float = 0.3
    folds: int = 0
    cracks: int = 0
    fold_width_nm: float = 32.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "PhantomParams":
        """Params from the config's ``phantom:`` mapping; missing keys take defaults.

        Raises ValueError naming an unknown key or a value out of range.
        """
        d = dict(d or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"phantom: unknown parameter {unknown[0]!r} (known: {', '.join(names)})")
        if "shape" in d:
            d["shape"] = tuple(d["shape"]) if isinstance(d["shape"], (list, tuple)) else d["shape"]
        params = cls(**d)
        params.validate()
        return params

    def to_dict(self) -> dict:
        """The params as JSON-able values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        """Raise ValueError naming the first parameter with a bad type or value."""

        def bad(key, why):
            raise ValueError(f"phantom.{key} = {getattr(self, key)!r}: {why}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not (isinstance(self.shape, tuple) and len(self.shape) == 3 and all(is_int(s) and s >= 8 for s in self.shape)):
            bad("shape", "must be 3 integers >= 8 (z, y, x voxels)")
        for key in ("seed", "n_synapses", "n_orphan_synapses", "extra_rois", "missing_sections", "blank_sections",
                    "low_contrast_sections", "folds", "cracks"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 0:
                bad(key, "must be an integer >= 0")
        for key in ("n_neurons", "n_orientations", "n_trials"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                bad(key, "must be an integer >= 1")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("float", float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                bad(f.name, "must be a number")
        if not self.elastic_length_nm > 0:
            bad("elastic_length_nm", "must be > 0")
        for key in ("low_contrast_factor", "inhibitory_fraction", "bundle_fraction", "faint_membrane_fraction", "imaged_fraction",
                    "membrane_contrast"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                bad(key, "must be in [0, 1]")
        if not 0.0 < self.filler_coverage <= 1.0:
            bad("filler_coverage", "must be in (0, 1]")
        if not 0.0 <= self.ecs_fraction <= 0.1:
            bad("ecs_fraction", "must be in [0, 0.1] (at most 10 % extracellular space)")
        for key in ("soma_radius_nm", "dendrite_radius_nm", "dendrite_length_nm", "axon_radius_nm", "axon_length_nm"):
            if not getattr(self, key) > 0:
                bad(key, "must be > 0")
        for key in ("mito_density", "noise_sigma", "blur_sigma_px", "section_jitter",
                    "roi_jitter_um", "response_noise", "misalign_step_nm", "misalign_jitter_nm",
                    "misalign_rotation_deg", "misalign_scale", "elastic_nm", "fold_width_nm"):
            if not getattr(self, key) >= 0:
                bad(key, "must be >= 0")
