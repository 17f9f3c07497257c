"""Table input of co-registration: Parquet/CSV readers, the ROI and stimulus tables, the EM somata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ROI_COLUMNS = ("roi_id", "x_um", "y_um", "z_um")
_ROI_ALIASES = {"x": "x_um", "y": "y_um", "z": "z_um"}
SOMA_COLUMNS = ("soma_x_nm", "soma_y_nm", "soma_z_nm")  # (x, y, z): the order of the affine


def read_table(path: str | Path) -> pd.DataFrame:
    """A Parquet (``.parquet``/``.pq``) or CSV (``.csv``/``.tsv``) table; a ValueError for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    raise ValueError(f"{path}: unsupported table format {suffix!r} (expected .parquet or .csv)")


def load_rois(path: str | Path) -> pd.DataFrame:
    """The ROI table (``roi_id``, ``x_um``, ``y_um``, ``z_um``), validated; other columns are dropped."""
    table = read_table(path)
    table = table.rename(columns={k: v for k, v in _ROI_ALIASES.items() if k in table and v not in table})
    missing = [c for c in ROI_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"{path}: ROI table lacks column(s) {missing} (needs {list(ROI_COLUMNS)})")
    table = table[list(ROI_COLUMNS)].copy()
    if table["roi_id"].duplicated().any():
        dup = table.loc[table["roi_id"].duplicated(), "roi_id"].tolist()[:5]
        raise ValueError(f"{path}: duplicated roi_id values {dup}")
    pos = table[list(ROI_COLUMNS[1:])].to_numpy(float)
    if not np.isfinite(pos).all():
        raise ValueError(f"{path}: ROI positions contain NaN or inf")
    table["roi_id"] = table["roi_id"].astype(np.int64)
    return table.reset_index(drop=True)


def load_stimuli(path: str | Path) -> pd.DataFrame:
    """The stimulus table (``stimulus_id``, ``orientation_deg``), validated."""
    table = read_table(path)
    missing = [c for c in ("stimulus_id", "orientation_deg") if c not in table]
    if missing:
        raise ValueError(f"{path}: stimulus table lacks column(s) {missing}")
    if table["stimulus_id"].duplicated().any():
        raise ValueError(f"{path}: duplicated stimulus_id values")
    return table.reset_index(drop=True)


def neuron_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of a neuron table that are neurons: ``is_neuron`` true (when present) and a finite soma position."""
    keep = np.isfinite(table[list(SOMA_COLUMNS)].to_numpy(float)).all(axis=1)
    if "is_neuron" in table:
        keep &= table["is_neuron"].fillna(False).to_numpy(bool)
    return table[keep].reset_index(drop=True)


def load_somata(path: str | Path) -> pd.DataFrame:
    """EM neurons (``id``, ``soma_x_nm``, ``soma_y_nm``, ``soma_z_nm``): ``is_neuron`` rows with a soma position."""
    table = read_table(path)
    missing = [c for c in ("id", *SOMA_COLUMNS) if c not in table]
    if missing:
        raise ValueError(f"{path}: neuron table lacks column(s) {missing}")
    table = neuron_rows(table)[["id", *SOMA_COLUMNS]]
    return table.reset_index(drop=True)
