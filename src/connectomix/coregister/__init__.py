"""Co-registration: match two-photon ROIs to EM somata.

The functional input (``functional``: three tables or one NWB file; ``tables``: table readers and the EM somata),
the EM (nm) -> imaging (µm) affine (``transform``: landmarks, or RANSAC + trimmed ICP), the one-to-one assignment by
integer linear programming (``assign``) and ``connectomix coregister`` (``cli``).
"""

from connectomix.coregister.assign import assign_ilp, coregister, merged_params
from connectomix.coregister.functional import load_functional, read_nwb, write_nwb
from connectomix.coregister.tables import (
    ROI_COLUMNS, SOMA_COLUMNS, load_rois, load_somata, load_stimuli, neuron_rows, read_table,
)
from connectomix.coregister.transform import (
    FitResult, apply_affine, estimate_transform, fit_affine, fit_from_landmarks, fit_similarity, icp_refine,
    ransac_unknown_correspondence, robust_sigma, sigma_upper_bound,
)

__all__ = [
    "ROI_COLUMNS", "SOMA_COLUMNS", "FitResult", "apply_affine", "assign_ilp", "coregister", "estimate_transform",
    "fit_affine", "fit_from_landmarks", "fit_similarity", "icp_refine", "load_functional", "load_rois",
    "load_somata", "load_stimuli", "merged_params", "neuron_rows", "ransac_unknown_correspondence", "read_nwb",
    "read_table", "robust_sigma", "sigma_upper_bound", "write_nwb",
]
