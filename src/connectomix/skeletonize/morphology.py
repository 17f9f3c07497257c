"""Skeleton tables and per-neuron morphology.

``skeletons.parquet`` (one row per vertex, a rooted tree per segment, parents before children):
``id`` (uint64 segment), ``node`` (int32, 0.. within the segment), ``parent`` (int32, -1 at a root),
``z_nm``, ``y_nm``, ``x_nm`` (EM frame), ``radius_nm`` (distance to the boundary), ``soma`` (bool: the node is the
segment's soma centre). The root of a segment's main component is its soma centre when it has one (else its widest
vertex). Tables written before the ``soma`` column existed are read with the radius rule (``soma_sphere``).

``morphology.parquet`` (one row per segment): see ``MORPHOLOGY_COLUMNS``. Soma position and radius are the
skeleton's widest point and its inscribed radius, or, when the segmentation is given (``with_soma_bodies``), the
soma body's centroid and equivalent-sphere radius (``connectomix.skeletonize.soma``; ``soma_volume_nm3`` set).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from connectomix.skeletonize.params import resolve
from connectomix.skeletonize.soma import BODY_COLUMNS, soma_bodies, soma_sphere
from connectomix.skeletonize.tree import Skel, to_tree

# SWC structure identifiers (also the `compartment` codes here).
UNDEFINED, SOMA, AXON, DENDRITE = 0, 1, 2, 3

MORPHOLOGY_COLUMNS = [
    "id", "n_vertices", "n_components", "cable_length_nm", "branch_points", "tips", "mean_radius_nm",
    "max_radius_nm", "has_soma", "soma_z_nm", "soma_y_nm", "soma_x_nm", "soma_radius_nm", "extent_z_nm",
    "extent_y_nm", "extent_x_nm", "axon_cable_nm", "dendrite_cable_nm", "axon_dendrite_method",
    "soma_inscribed_radius_nm", "soma_volume_nm3", "soma_truncated",
]


def skeletons_to_table(skels: dict[int, Skel], soma_ids: Iterable[int] | None = None) -> pd.DataFrame:
    """Rooted trees of every segment as one vertex table (the ``skeletons.parquet`` layout). ``soma_ids``: the
    segments with a soma (``find_somata``), marked in the ``soma`` column; None: no column (readers then take
    ``soma_sphere``'s radius rule)."""
    frames = []
    marked = set() if soma_ids is None else {int(i) for i in soma_ids}
    for label in sorted(skels):
        tree, parent = to_tree(skels[label])
        frames.append(pd.DataFrame({
            "id": np.full(len(tree), label, np.uint64),
            "node": np.arange(len(tree), dtype=np.int32),
            "parent": parent.astype(np.int32),
            "z_nm": tree.vertices[:, 0], "y_nm": tree.vertices[:, 1], "x_nm": tree.vertices[:, 2],
            "radius_nm": tree.radii.astype(np.float32),
            "soma": (np.arange(len(tree)) == 0) & (int(label) in marked),
        }))
    if not frames:
        table = pd.DataFrame({c: pd.Series(dtype=t) for c, t in [
            ("id", "uint64"), ("node", "int32"), ("parent", "int32"), ("z_nm", "float64"), ("y_nm", "float64"),
            ("x_nm", "float64"), ("radius_nm", "float32"), ("soma", "bool")]})
    else:
        table = pd.concat(frames, ignore_index=True)
    return table if soma_ids is not None else table.drop(columns="soma")


def soma_ids(table: pd.DataFrame) -> set[int] | None:
    """The segments of a ``skeletons.parquet`` table with a soma; None for a table without the ``soma`` column."""
    if "soma" not in table.columns:
        return None
    return {int(i) for i in table.loc[table["soma"].to_numpy(bool), "id"]}


def table_to_trees(table: pd.DataFrame) -> dict[int, tuple[Skel, np.ndarray]]:
    """``{id: (skel, parent)}`` from a ``skeletons.parquet`` table (node order kept)."""
    out = {}
    for label, g in table.groupby("id", sort=True):
        g = g.sort_values("node")
        parent = g["parent"].to_numpy(np.int64)
        child = np.flatnonzero(parent >= 0)
        skel = Skel(g[["z_nm", "y_nm", "x_nm"]].to_numpy(np.float64), np.stack([child, parent[child]], axis=1),
                    g["radius_nm"].to_numpy(np.float32))
        out[int(label)] = (skel, parent)
    return out


def _subtree_of(parent: np.ndarray, root: int) -> np.ndarray:
    """For each vertex, the child of ``root`` whose subtree holds it (-1 for the root and other components).
    Relies on parents coming before children."""
    top = np.full(len(parent), -1, np.int64)
    for v in range(len(parent)):
        p = parent[v]
        if p == root:
            top[v] = v
        elif p >= 0:
            top[v] = top[p]
    return top


def compartments(
    skel: Skel,
    parent: np.ndarray,
    params: dict | None = None,
    synapses: pd.DataFrame | None = None,
    is_soma: bool | None = None,
) -> tuple[np.ndarray, str]:
    """Per-vertex compartment (SOMA, AXON, DENDRITE, UNDEFINED) and the method used.

    Needs a soma at the root (vertex 0, see ``soma_sphere``, which ``is_soma`` decides when given); otherwise
    everything is UNDEFINED. Each neurite leaving the soma (a child subtree of the root) is one unit.
    ``axon_dendrite.method``:

    * ``radius`` (geometric): the axon is the thinnest neurite (mean radius) among those with at least
      ``min_axon_cable_nm`` of cable, when there are two or more neurites; the others are dendrites.
    * ``synapses`` (polarity; the refinement hook for when synapses exist): ``synapses`` has columns ``z_nm``,
      ``y_nm``, ``x_nm`` and ``kind`` ('pre' or 'post'), each site assigned to its nearest vertex; the axon is
      the neurite with the largest excess of presynaptic over postsynaptic sites (ties: the thinnest).
    """
    p = resolve(params)
    method = p["axon_dendrite"]["method"]
    comp = np.full(len(skel), UNDEFINED, np.int8)
    soma = soma_sphere(skel, p, is_soma)
    if soma is None or soma[0] != 0 or len(skel) < 2:
        return comp, "none"
    comp[0] = SOMA
    top = _subtree_of(parent, 0)
    neurites = np.unique(top[top >= 0])
    if len(neurites) == 0:
        return comp, method
    length = np.zeros(len(skel))
    has_parent = parent >= 0
    length[has_parent] = np.linalg.norm(skel.vertices[has_parent] - skel.vertices[parent[has_parent]], axis=1)
    cable = {n: float(length[top == n].sum()) for n in neurites}
    radius = {n: float(skel.radii[top == n].mean()) for n in neurites}
    comp[top >= 0] = DENDRITE
    if method == "synapses":
        if synapses is None or len(synapses) == 0:
            raise ValueError("axon_dendrite.method 'synapses' needs synapse positions (none given)")
        from scipy.spatial import cKDTree

        _, nearest = cKDTree(skel.vertices).query(synapses[["z_nm", "y_nm", "x_nm"]].to_numpy(float))
        sign = np.where(synapses["kind"].to_numpy() == "pre", 1, -1)
        score = {n: int(sign[top[nearest] == n].sum()) for n in neurites}
        axon = max(neurites, key=lambda n: (score[n], -radius[n]))
        if score[axon] > 0:
            comp[top == axon] = AXON
        return comp, method
    candidates = [n for n in neurites if cable[n] >= float(p["axon_dendrite"]["min_axon_cable_nm"])]
    if len(neurites) >= 2 and candidates:
        axon = min(candidates, key=lambda n: (radius[n], -cable[n]))
        comp[top == axon] = AXON
    return comp, method


def morphology_row(label: int, skel: Skel, parent: np.ndarray, params: dict | None = None,
                   synapses: pd.DataFrame | None = None, is_soma: bool | None = None) -> dict:
    """One segment's morphology (lengths and positions in nm); ``is_soma`` as for ``compartments``."""
    p = resolve(params)
    deg = skel.degrees()
    soma = soma_sphere(skel, p, is_soma)
    has_soma = soma is not None and soma[0] == 0
    comp, method = compartments(skel, parent, p, synapses, is_soma)
    length = np.zeros(len(skel))
    hp = parent >= 0
    length[hp] = np.linalg.norm(skel.vertices[hp] - skel.vertices[parent[hp]], axis=1)
    extent = skel.vertices.max(axis=0) - skel.vertices.min(axis=0)
    centre = skel.vertices[0]
    return {
        "id": np.uint64(label), "n_vertices": len(skel), "n_components": skel.n_components(),
        "cable_length_nm": float(length.sum()),
        "branch_points": int((deg >= 3).sum()), "tips": int((deg == 1).sum()),
        "mean_radius_nm": float(skel.radii.mean()), "max_radius_nm": float(skel.radii.max()),
        "has_soma": bool(has_soma),
        "soma_z_nm": float(centre[0]) if has_soma else np.nan,
        "soma_y_nm": float(centre[1]) if has_soma else np.nan,
        "soma_x_nm": float(centre[2]) if has_soma else np.nan,
        "soma_radius_nm": float(skel.radii[0]) if has_soma else np.nan,
        "extent_z_nm": float(extent[0]), "extent_y_nm": float(extent[1]), "extent_x_nm": float(extent[2]),
        "axon_cable_nm": float(length[comp == AXON].sum()),
        "dendrite_cable_nm": float(length[comp == DENDRITE].sum()),
        "axon_dendrite_method": method,
        "soma_inscribed_radius_nm": float(skel.radii[0]) if has_soma else np.nan,
        "soma_volume_nm3": np.nan,
        "soma_truncated": False,
    }


def morphology_table(trees: dict[int, tuple[Skel, np.ndarray]], params: dict | None = None,
                     synapses_by_id: dict[int, pd.DataFrame] | None = None,
                     soma_ids: set[int] | None = None) -> pd.DataFrame:
    """``morphology.parquet`` from ``table_to_trees`` output; ``synapses_by_id`` feeds the polarity split;
    ``soma_ids`` (``soma_ids`` of the table) the segments with a soma (None: the radius rule)."""
    rows = [morphology_row(label, skel, parent, params, (synapses_by_id or {}).get(label),
                           None if soma_ids is None else label in soma_ids)
            for label, (skel, parent) in sorted(trees.items())]
    df = pd.DataFrame(rows, columns=MORPHOLOGY_COLUMNS)
    return df.astype({"id": "uint64"})


def with_soma_bodies(table: pd.DataFrame, volume, array: str, params: dict | None = None) -> pd.DataFrame:
    """``table`` (``morphology_table``) with each soma measured as a body on the label array ``array`` of
    ``volume``: centroid, equivalent-sphere radius, volume and truncation (``connectomix.skeletonize.soma``)."""
    p = resolve(params)
    table = table.copy()
    somata = table.loc[table["has_soma"], ["id", "soma_z_nm", "soma_y_nm", "soma_x_nm", "soma_radius_nm"]]
    bodies = soma_bodies(volume, array, somata, p["soma_body"]).set_index("id")
    rows = table["id"].isin(bodies.index).to_numpy()
    for col in BODY_COLUMNS:
        table.loc[rows, col] = bodies.loc[table.loc[rows, "id"], col].to_numpy()
    return table


def iter_compartments(table: pd.DataFrame, params: dict | None = None):
    """Yield ``(id, skel, parent, compartment)`` for every segment of a skeletons table, the soma decision taken
    from its ``soma`` column (the radius rule for a table without one)."""
    somata = soma_ids(table)
    for label, skel, parent in iter_trees(table):
        comp, _ = compartments(skel, parent, params, is_soma=None if somata is None else label in somata)
        yield label, skel, parent, comp


def iter_trees(table: pd.DataFrame, ids: Iterable[int] | None = None):
    """Yield ``(id, skel, parent)`` for the requested (default: all) segments."""
    trees = table_to_trees(table if ids is None else table[table["id"].isin(list(ids))])
    for label, (skel, parent) in trees.items():
        yield label, skel, parent
