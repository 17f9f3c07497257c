"""The functional (two-photon) input: an ROI table, responses and a stimulus table, or one NWB file.

* ROI table (Parquet or CSV): ``roi_id`` (int, unique), ``x_um``, ``y_um``, ``z_um`` (ROI centre in the imaging
  frame, µm; ``x``, ``y``, ``z`` are accepted as aliases). Any other column is ignored; in particular the phantom's
  ground-truth ``neuron_id`` is never read here.
* Responses (``.npy``): float array (roi, stimulus, trial), rows in ROI-table order, no NaN/inf.
* Stimulus table (Parquet or CSV): ``stimulus_id`` (unique), ``orientation_deg`` (NaN marks a blank), rows in the
  order of the responses' stimulus axis.
* Or one NWB file (``.nwb``, pynwb) holding all three (:func:`read_nwb`, written by :func:`write_nwb`; the phantom
  writes ``gt/functional/functional.nwb``): the ROIs of the ``ophys`` module's ``ImageSegmentation``
  (a ``PlaneSegmentation``), one ``RoiResponseSeries`` (time = stimulus presentations, one row each) and the
  ``trials`` table, one row per presentation in the same order, with ``stimulus_id`` and ``orientation_deg``
  columns. ROI centres come from ``x_um``/``y_um``/``z_um`` columns when present, else from the weighted centroid
  of each ROI's ``voxel_mask`` (or ``pixel_mask``, z 0) through the imaging plane's ``origin_coords`` and
  ``grid_spacing`` (µm); ROI ids from a ``roi_id`` column, else the table's ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from connectomix.coregister.tables import ROI_COLUMNS, load_rois, load_stimuli


def load_functional(rois: str | Path, responses: str | Path | None = None, stimuli: str | Path | None = None):
    """``(rois, responses, stimuli)``: the ROI table, the (roi, stimulus, trial) array and the stimulus table, from
    three files or from one NWB file (``rois`` ending in .nwb; ``responses`` and ``stimuli`` then name the same
    file or are None).

    Raises ValueError naming the file for missing columns, duplicated ids, NaN responses and shape mismatches.
    """
    if Path(rois).suffix.lower() == ".nwb":
        others = {str(Path(f)) for f in (responses, stimuli) if f is not None} - {str(Path(rois))}
        if others:
            raise ValueError(f"{rois} is an NWB file holding responses and stimuli too; got other files {sorted(others)}")
        return read_nwb(rois)
    if responses is None or stimuli is None:
        raise ValueError(f"{rois}: a ROI table needs its responses (.npy) and stimulus table files as well")
    roi_table = load_rois(rois)
    stim_table = load_stimuli(stimuli)
    path = Path(responses)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() != ".npy":
        raise ValueError(f"{path}: responses must be a .npy array (roi, stimulus, trial)")
    return roi_table, _checked_responses(np.load(path, allow_pickle=False), path, roi_table, stim_table, rois,
                                         stimuli), stim_table


def _checked_responses(array, path, roi_table, stim_table, rois, stimuli) -> np.ndarray:
    if array.ndim != 3:
        raise ValueError(f"{path}: responses must have 3 axes (roi, stimulus, trial), got shape {array.shape}")
    if array.shape[0] != len(roi_table):
        raise ValueError(f"{path}: {array.shape[0]} response rows but {len(roi_table)} ROIs in {rois}")
    if array.shape[1] != len(stim_table):
        raise ValueError(f"{path}: {array.shape[1]} stimuli in responses but {len(stim_table)} rows in {stimuli}")
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: responses contain NaN or inf ({int((~np.isfinite(array)).sum())} values)")
    return array.astype(np.float64)


def write_nwb(path: str | Path, rois: pd.DataFrame, responses: np.ndarray, stimuli: pd.DataFrame,
              description: str = "two-photon functional imaging", grid_spacing_um: float = 0.01) -> None:
    """Functional data as NWB (see the module docstring): ROIs (ids, centres as columns and as one-voxel masks on a
    ``grid_spacing_um`` grid), responses as presentations (trial-major: every stimulus once, then again) and the
    trials table. Written to a temporary file and renamed, so a killed job leaves no partial file."""
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import Fluorescence, ImageSegmentation, OpticalChannel

    path = Path(path)
    rois = rois[list(ROI_COLUMNS)].reset_index(drop=True)
    n_roi, n_stim, n_trial = responses.shape
    nwb = NWBFile(session_description=description, identifier=path.stem,
                  session_start_time=datetime(2000, 1, 1, tzinfo=timezone.utc))
    device = nwb.create_device(name="microscope", description="two-photon microscope")
    centres = rois[["x_um", "y_um", "z_um"]].to_numpy(float)
    origin = centres.min(axis=0) if len(centres) else np.zeros(3)
    plane = nwb.create_imaging_plane(
        name="volume", optical_channel=OpticalChannel(name="green", description="calcium indicator",
                                                      emission_lambda=510.0),
        description="imaged volume; ROI positions in micrometres", device=device, excitation_lambda=920.0,
        indicator="calcium indicator", location="cortex", origin_coords=origin.tolist(),
        origin_coords_unit="micrometers", grid_spacing=[grid_spacing_um] * 3, grid_spacing_unit="micrometers")
    module = nwb.create_processing_module(name="ophys", description="ROIs and their responses")
    segmentation = ImageSegmentation()
    module.add(segmentation)
    table = segmentation.create_plane_segmentation(name="PlaneSegmentation", description="ROIs",
                                                   imaging_plane=plane)
    for column, text in (("roi_id", "ROI id"), ("x_um", "ROI centre x, micrometres"),
                         ("y_um", "ROI centre y, micrometres"), ("z_um", "ROI centre z, micrometres")):
        table.add_column(name=column, description=text)
    for row, centre in zip(rois.itertuples(index=False), centres):
        index = np.rint((centre - origin) / grid_spacing_um).astype(np.uint32)
        table.add_roi(voxel_mask=[(int(index[0]), int(index[1]), int(index[2]), 1.0)], roi_id=int(row.roi_id),
                      x_um=float(row.x_um), y_um=float(row.y_um), z_um=float(row.z_um))
    data = np.transpose(np.asarray(responses, np.float32), (2, 1, 0)).reshape(n_trial * n_stim, n_roi)
    fluorescence = Fluorescence()
    module.add(fluorescence)
    fluorescence.create_roi_response_series(
        name="responses", data=data, unit="dF/F", starting_time=0.0, rate=1.0,
        rois=table.create_roi_table_region(region=list(range(n_roi)), description="all"),
        description="one sample per stimulus presentation (trials table, same order)")
    nwb.add_trial_column(name="stimulus_id", description="stimulus of the presentation")
    nwb.add_trial_column(name="orientation_deg", description="grating orientation, degrees (NaN: blank)")
    for k, (trial, stim) in enumerate(np.ndindex(n_trial, n_stim)):
        nwb.add_trial(start_time=float(k), stop_time=float(k + 1), stimulus_id=int(stimuli["stimulus_id"].iloc[stim]),
                      orientation_deg=float(stimuli["orientation_deg"].iloc[stim]))
    tmp = path.with_suffix(".tmp.nwb")
    with NWBHDF5IO(str(tmp), "w") as io_:
        io_.write(nwb)
    tmp.replace(path)


def read_nwb(path: str | Path):
    """``(rois, responses, stimuli)`` from an NWB file laid out as the module docstring says; ValueError (naming
    the file) for a missing part, unequal presentations per stimulus, NaN responses or mismatched counts."""
    from pynwb import NWBHDF5IO
    from pynwb.ophys import PlaneSegmentation, RoiResponseSeries

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with NWBHDF5IO(str(path), "r") as io_:
        nwb = io_.read()
        objects = list(nwb.objects.values())
        tables = [o for o in objects if isinstance(o, PlaneSegmentation)]
        series = [o for o in objects if isinstance(o, RoiResponseSeries)]
        if len(tables) != 1 or len(series) != 1:
            raise ValueError(f"{path}: needs exactly one PlaneSegmentation and one RoiResponseSeries "
                             f"(found {len(tables)} and {len(series)})")
        table, series = tables[0], series[0]
        frame = table.to_dataframe()
        if {"x_um", "y_um", "z_um"} <= set(frame.columns):
            centres = frame[["x_um", "y_um", "z_um"]].to_numpy(float)
        else:
            centres = _mask_centres(table, path)
        ids = frame["roi_id"].to_numpy(np.int64) if "roi_id" in frame else frame.index.to_numpy(np.int64)
        data = np.asarray(series.data[:], np.float64)
        region = np.asarray(series.rois.data[:], np.int64)
        if nwb.trials is None:
            raise ValueError(f"{path}: no trials table (one row per presentation, with stimulus_id, orientation_deg)")
        trials = nwb.trials.to_dataframe()
    missing = [c for c in ("stimulus_id", "orientation_deg") if c not in trials]
    if missing:
        raise ValueError(f"{path}: trials table lacks column(s) {missing}")
    if data.ndim != 2 or data.shape[0] != len(trials):
        raise ValueError(f"{path}: {data.shape[0] if data.ndim else 0} response samples but {len(trials)} trials "
                         "(one sample per presentation)")
    rois = pd.DataFrame({"roi_id": ids[region], "x_um": centres[region, 0], "y_um": centres[region, 1],
                         "z_um": centres[region, 2]})
    if rois["roi_id"].duplicated().any():
        raise ValueError(f"{path}: duplicated roi_id values {rois.loc[rois['roi_id'].duplicated(), 'roi_id'].tolist()[:5]}")
    stimuli = trials.drop_duplicates("stimulus_id")[["stimulus_id", "orientation_deg"]].reset_index(drop=True)
    counts = trials["stimulus_id"].value_counts()
    if counts.nunique() != 1:
        raise ValueError(f"{path}: stimuli were presented unequal numbers of times ({counts.to_dict()}); the "
                         "responses need as many trials of every stimulus")
    order = [np.flatnonzero(trials["stimulus_id"].to_numpy() == s) for s in stimuli["stimulus_id"]]
    responses = np.stack([data[rows].T for rows in order], axis=1)  # (roi, stimulus, trial)
    return rois, _checked_responses(responses, path, rois, stimuli, path, path), stimuli


def _mask_centres(table, path) -> np.ndarray:
    """Weighted centroids (µm) of a PlaneSegmentation's voxel or pixel masks, through its imaging plane's grid."""
    plane = table.imaging_plane
    spacing = np.asarray(plane.grid_spacing if plane.grid_spacing is not None else [1.0, 1.0, 1.0], float)
    origin = np.asarray(plane.origin_coords if plane.origin_coords is not None else [0.0, 0.0, 0.0], float)
    spacing = np.resize(spacing, 3)
    origin = np.resize(origin, 3) if origin.size >= 3 else np.r_[origin, np.zeros(3 - origin.size)]
    column = "voxel_mask" if "voxel_mask" in table.colnames else "pixel_mask" if "pixel_mask" in table.colnames else None
    if column is None:
        raise ValueError(f"{path}: ROIs have neither x_um/y_um/z_um columns nor voxel or pixel masks")
    centres = []
    for mask in table[column][:]:
        m = np.asarray([tuple(v) for v in mask], float)
        if column == "pixel_mask":
            m = np.c_[m[:, :2], np.zeros(len(m)), m[:, 2]]
        w = m[:, 3] / m[:, 3].sum()
        centres.append(origin + (m[:, :3] * w[:, None]).sum(axis=0) * spacing)
    return np.asarray(centres).reshape(-1, 3)

