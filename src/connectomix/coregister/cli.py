"""``connectomix coregister``: match the ROIs of a functional dataset to the EM somata of ``neurons.parquet``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from connectomix import provenance
from connectomix.blocks import atomic_write_json, atomic_write_parquet
from connectomix.coregister.assign import coregister, merged_params
from connectomix.coregister.functional import load_functional
from connectomix.coregister.tables import load_somata
from connectomix.coregister.transform import FitResult


def add_arguments(parser) -> None:
    """Options of ``connectomix coregister``."""
    parser.add_argument("--rois", required=True, help="ROI table (.parquet/.csv): roi_id, x_um, y_um, z_um")
    parser.add_argument("--responses", required=True, help="responses .npy (roi, stimulus, trial)")
    parser.add_argument("--stimuli", required=True, help="stimulus table (.parquet/.csv): stimulus_id, orientation_deg")
    parser.add_argument("--neurons", required=True, help="EM neurons.parquet (id, soma_*_nm)")
    parser.add_argument("--params", default="{}", help="JSON: the config's coregister section (defaults filled)")
    parser.add_argument("--landmarks", default="[]",
                        help="JSON list of {em_nm: [x, y, z], imaging_um: [x, y, z]} pairs (empty: estimate)")
    parser.add_argument("--out", required=True, help="matches.parquet to write")
    parser.add_argument("--transform", required=True, help="JSON to write: the fitted affine and fit statistics")


def run(args) -> int:
    """Fit the transform, assign the ROIs, write ``--out`` and ``--transform``."""
    params = merged_params(json.loads(args.params))
    landmarks = json.loads(args.landmarks) or None
    rois, _, _ = load_functional(args.rois, args.responses, args.stimuli)
    somata = load_somata(args.neurons)
    if len(somata) < 3 and not landmarks:
        # Nothing to register against (e.g. no segment was recognised as a neuron): every ROI stays unmatched.
        print(f"coregister: only {len(somata)} EM somata (< 3); all {len(rois)} ROIs left unmatched")
        matches = pd.DataFrame({"roi_id": rois["roi_id"].to_numpy(), "neuron_id": np.zeros(len(rois), np.uint64),
                                "distance": np.full(len(rois), np.nan), "confidence": np.zeros(len(rois))})
        fit, gate = FitResult(np.full((4, 4), np.nan), "none: too few somata", 0, float("nan")), float("nan")
    else:
        matches, fit, gate = coregister(rois, somata, params, landmarks)
    atomic_write_parquet(matches, args.out)
    n_matched = int((matches["neuron_id"] > 0).sum())
    atomic_write_json(args.transform, {
        "matrix": fit.matrix.tolist(),
        "direction": "EM (x, y, z, 1) nm -> imaging (x, y, z) um",
        "method": fit.method,
        "n_inliers": fit.n_inliers,
        "sigma_um": fit.sigma_um,
        "gate_um": gate,
        "n_rois": len(rois),
        "n_somata": len(somata),
        "n_matched": n_matched,
        "info": fit.info,
        "provenance": provenance.record(params, {
            p: provenance.file_checksum(p) for p in (args.rois, args.responses, args.stimuli, args.neurons)}),
    })
    print(f"coregister: {fit.method}, {fit.n_inliers} inlier pairs, sigma {fit.sigma_um:.3f} um, gate {gate:.2f} um; "
          f"{n_matched}/{len(rois)} ROIs matched")
    return 0
