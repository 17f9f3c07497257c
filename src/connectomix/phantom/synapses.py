"""Synapses where an axon touches another neuron's dendrite or soma, chosen with a like-to-like rule."""

from __future__ import annotations

import numpy as np
import pandas as pd

from connectomix.phantom.tissue import AXON, DENDRITE, FILLER, SOMA

CLEFT_RADIUS_NM = 110.0  # in-plane radius of a cleft disc around the contact centre
MIN_SYNAPSE_SPACING_NM = 180.0
MIN_CONTACT_VOXELS = 6
MIN_CLEFT_VOXELS = 16


def contact_sites(labels, kind, n_neurons, voxel):
    """Contacts of an axon (a neuron's or a passing filler axon) with another neuron's dendrite or soma.

    Returns a DataFrame with one row per connected contact patch (site, pre, post, voxels, ctr_z/y/x_nm) and
    the volume of site ids on the post-side contact voxels.
    """
    import cc3d

    neuron = (labels <= n_neurons) & (labels > 0)
    pre_ok = ((kind == AXON) & neuron) | ((kind == FILLER) & (labels > 0))
    post_ok = np.isin(kind, (SOMA, DENDRITE)) & neuron
    base = np.uint64(int(labels.max()) + 1)
    # pair code per post-side voxel: pre * base + post, over in-plane neighbours
    code = np.zeros(labels.shape, dtype=np.uint64)
    for axis in (1, 2):  # in-plane neighbours: clefts are sheets across the sections, as in ssTEM
        for step in (1, -1):
            a = [slice(None)] * 3
            b = [slice(None)] * 3
            a[axis] = slice(None, -1) if step == 1 else slice(1, None)
            b[axis] = slice(1, None) if step == 1 else slice(None, -1)
            a, b = tuple(a), tuple(b)
            hit = pre_ok[a] & post_ok[b] & (labels[a] != labels[b])
            view = code[b]
            view[hit] = labels[a][hit] * base + labels[b][hit]
    sites = cc3d.connected_components(code, connectivity=26, out_dtype=np.uint32)
    ids = sites.ravel()
    nz = np.flatnonzero(ids)
    if nz.size == 0:
        return pd.DataFrame(columns=["site", "pre", "post", "voxels", "ctr_z_nm", "ctr_y_nm", "ctr_x_nm"]), sites
    zyx = np.stack(np.unravel_index(nz, labels.shape), axis=1).astype(np.float64) * voxel
    frame = pd.DataFrame({"site": ids[nz], "code": code.ravel()[nz], "z": zyx[:, 0], "y": zyx[:, 1], "x": zyx[:, 2]})
    table = frame.groupby("site").agg(code=("code", "first"), voxels=("z", "size"),
                                      ctr_z_nm=("z", "mean"), ctr_y_nm=("y", "mean"), ctr_x_nm=("x", "mean"))
    table = table[table.voxels >= MIN_CONTACT_VOXELS].reset_index()
    table["pre"] = (table.code // base).astype(np.uint64)
    table["post"] = (table.code % base).astype(np.uint64)
    return table.drop(columns="code"), sites


def choose_synapses(rng, sites: pd.DataFrame, weight: np.ndarray, n_synapses: int, taken=None):
    """Pick ``n_synapses`` contact sites, sampled in proportion to ``weight`` and at least
    MIN_SYNAPSE_SPACING_NM from each other and from the centres in ``taken`` (nm, (k, 3)).

    Weighted sampling without replacement (Efraimidis-Spirakis keys), deterministic for a given rng.
    """
    if len(sites) == 0 or n_synapses == 0:
        return sites.iloc[:0]
    keys = rng.random(len(sites)) ** (1.0 / np.asarray(weight, float))
    centres = sites[["ctr_z_nm", "ctr_y_nm", "ctr_x_nm"]].to_numpy()
    accepted = list(np.zeros((0, 3)) if taken is None else taken)
    chosen: list[int] = []
    for i in np.argsort(-keys):
        if len(chosen) == n_synapses:
            break
        if accepted and np.min(np.linalg.norm(np.asarray(accepted) - centres[i], axis=1)) < MIN_SYNAPSE_SPACING_NM:
            continue
        chosen.append(i)
        accepted.append(centres[i])
    return sites.iloc[chosen]  # in sampling order: any prefix is a weighted sample


def like_to_like_weight(sites: pd.DataFrame, orientation: dict, strength: float) -> np.ndarray:
    """exp(strength * cos(2 * delta preferred orientation)) per site."""
    delta = np.deg2rad([orientation[int(a)] - orientation[int(b)] for a, b in zip(sites.pre, sites.post)])
    return np.exp(strength * np.cos(2 * delta))


def draw_clefts(groups, sites_volume, labels, voxel):
    """Cleft sheets: the contact voxels of a chosen site within CLEFT_RADIUS_NM of its centre, on both sides.

    ``groups`` is a list of (candidate sites in sampling order, quota): candidates are taken in order until the
    quota has clefts of at least MIN_CLEFT_VOXELS (a contact too small for a synapse is passed over).
    Returns (clefts uint64 volume, synapse table per the data contract).
    """
    clefts = np.zeros(labels.shape, dtype=np.uint64)
    rows = []
    candidates = [(site, g) for g, (frame, _) in enumerate(groups) for site in frame.itertuples()]
    made = [0] * len(groups)
    for site, group in candidates:
        if made[group] >= groups[group][1]:
            continue
        syn_id = len(rows) + 1
        centre = np.array([site.ctr_z_nm, site.ctr_y_nm, site.ctr_x_nm])
        r_vox = np.ceil(CLEFT_RADIUS_NM / voxel).astype(int) + 2
        c_vox = np.round(centre / voxel).astype(int)
        lo = np.maximum(c_vox - r_vox, 0)
        hi = np.minimum(c_vox + r_vox + 1, labels.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1) * voxel
        near = np.linalg.norm(grid - centre, axis=-1) <= CLEFT_RADIUS_NM
        post_side = (sites_volume[box] == site.site) & near
        if not post_side.any():
            continue
        # the pre side: pre-object voxels 6-adjacent to the post-side voxels
        lab = labels[box]
        pre_side = np.zeros_like(post_side)
        for axis in (1, 2):
            for shift in (1, -1):
                pre_side |= np.roll(post_side, shift, axis=axis) & (lab == site.pre)
        sheet = (post_side | pre_side) & (clefts[box] == 0)
        if sheet.sum() < MIN_CLEFT_VOXELS:
            continue
        made[group] += 1
        clefts[box][sheet] = syn_id
        pre_pt = _inner_point(lab == site.pre, pre_side, grid)
        post_pt = _inner_point(lab == site.post, post_side, grid)
        ctr = grid[sheet].mean(axis=0)
        rows.append({
            "id": np.uint64(syn_id), "pre": np.uint64(site.pre), "post": np.uint64(site.post),
            "ctr_z_nm": ctr[0], "ctr_y_nm": ctr[1], "ctr_x_nm": ctr[2],
            "pre_z_nm": pre_pt[0], "pre_y_nm": pre_pt[1], "pre_x_nm": pre_pt[2],
            "post_z_nm": post_pt[0], "post_y_nm": post_pt[1], "post_x_nm": post_pt[2],
            "cleft_voxels": int(sheet.sum()),
        })
    columns = ["id", "pre", "post", "ctr_z_nm", "ctr_y_nm", "ctr_x_nm", "pre_z_nm", "pre_y_nm", "pre_x_nm",
               "post_z_nm", "post_y_nm", "post_x_nm", "cleft_voxels"]
    table = pd.DataFrame(rows, columns=columns)
    for col in ("id", "pre", "post"):
        table[col] = table[col].astype(np.uint64)
    return clefts, table


def _inner_point(obj_mask, sheet_mask, grid):
    """A voxel of the object near the sheet but not on it (the object's side of the cleft), in nm."""
    sheet_c = grid[sheet_mask].mean(axis=0)
    inside = obj_mask & ~sheet_mask
    if not inside.any():
        return sheet_c
    pts = grid[inside]
    d = np.linalg.norm(pts - sheet_c, axis=1)
    return pts[np.argmin(np.abs(d - 40.0))]


def like_to_like_slope(neurons: pd.DataFrame, edges: pd.DataFrame) -> float:
    """Like-to-like slope of a connectome: the least-squares slope of synapse count against cos(2 * delta
    preferred orientation) over all ordered neuron pairs, divided by the mean count.

    About the rule's strength k for the phantom (each contact becomes a synapse with weight exp(k cos 2 dtheta));
    ~0 without the rule. NaN when there are no synapses.
    """
    theta = dict(zip(neurons["id"].astype(int), neurons["pref_orientation_deg"]))
    weight = {(int(a), int(b)): c for a, b, c in zip(edges["pre"], edges["post"], edges["n_synapses"])}
    pairs = [(a, b) for a in theta for b in theta if a != b]
    if not pairs or not weight:
        return float("nan")
    x = np.cos(2 * np.deg2rad([theta[a] - theta[b] for a, b in pairs]))
    y = np.array([weight.get(pair, 0) for pair in pairs], dtype=float)
    return float(np.polyfit(x, y, 1)[0] / y.mean())
