"""The connectome: neurons, edges and the connectivity matrix from ``synapses.parquet`` and the segment tables.

Outputs (``results/{dataset}/``):

* ``neurons.parquet``: one row per segment (``segments.parquet`` ids, plus any synaptic partner missing there):
  ``id``, ``kind`` (``neuron`` when the segment has a soma in the volume, else ``orphan``: a fragment, kept and
  counted), ``is_neuron``, ``soma_z_nm``, ``soma_y_nm``, ``soma_x_nm``, ``soma_radius_nm``, ``soma_volume_nm3``
  (NaN for orphans, and the volume also when the morphology measured no soma body), ``soma_truncated`` (the soma
  body reaches the volume's edge: its size is a lower bound),
  ``soma_source`` (``morphology`` or ``distance_transform``), ``volume_voxels``, ``volume_nm3``, ``n_pre``
  (outgoing synapses), ``n_post`` (incoming), the numeric morphology features of ``morphology.parquet`` (prefixed
  ``morph_``) and ``cell_type`` (string, empty here; the analysis stage fills it).
* ``edges.parquet``: neuron -> neuron edges with at least ``min_synapses`` synapses: ``pre``, ``post``,
  ``n_synapses``, ``size_voxels``, ``size_nm2`` (summed cleft sizes), ``mean_score``. ``edges_all.parquet``: the same
  for every segment pair (orphans included) with ``pre_is_neuron``, ``post_is_neuron``.
* ``connectome/connectivity.npz``: scipy.sparse CSR of synapse counts, rows = pre, columns = post, in the order of
  the ``ids`` array stored in the same file (``scipy.sparse.load_npz`` reads the matrix, ``np.load(f)['ids']`` the
  order); ``connectome/connectivity.png``: the matrix as a figure; ``connectome/summary.json``: counts.

Soma detection: ``morphology.parquet`` (skeleton stage) decides when it has soma columns (``soma_radius_nm`` > 0, or
a boolean ``has_soma``). Without it (or without those columns) the documented fallback is used: the distance
transform of the segmentation subsampled to ``soma_step_nm``, distances to the nearest segment boundary (the volume
faces are not boundaries); a segment whose largest inscribed radius reaches ``soma_min_radius_nm`` is a neuron and
its soma is the point of that maximum.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from connectomix import config


def resolve(params: dict | None = None) -> dict:
    """``params`` (possibly partial) over the schema's defaults; unknown keys are an error."""
    return config.resolve("connectome", params)


def soma_by_distance_transform(seg, voxel_size, offset_nm=(0, 0, 0), step_nm: float = 40.0,
                               min_radius_nm: float = 1500.0):
    """Fallback soma detection (see the module docstring). ``seg`` is a numpy or zarr label array.

    Returns a DataFrame ``id, soma_radius_nm, soma_z_nm, soma_y_nm, soma_x_nm, is_neuron`` for every nonzero id.
    """
    import pandas as pd
    from scipy import ndimage

    steps = [max(1, int(round(step_nm / v))) for v in voxel_size]
    labels = np.asarray(seg[::steps[0], ::steps[1], ::steps[2]])
    sampling = [v * s for v, s in zip(voxel_size, steps)]
    boundary = labels == 0
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        diff = labels[tuple(a)] != labels[tuple(b)]
        boundary[tuple(a)] |= diff
        boundary[tuple(b)] |= diff
    if boundary.all() or not boundary.any():
        # no interior at all, or one label everywhere: the distance is unbounded; use the half-extent instead
        dist = np.zeros(labels.shape) if boundary.all() else np.full(labels.shape, min(
            s * v for s, v in zip(labels.shape, sampling)) / 2)
    else:
        dist = ndimage.distance_transform_edt(~boundary, sampling=sampling)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return pd.DataFrame({"id": np.zeros(0, np.uint64), "soma_radius_nm": [], "soma_z_nm": [], "soma_y_nm": [],
                             "soma_x_nm": [], "is_neuron": np.zeros(0, bool)})
    radius = np.asarray(ndimage.maximum(dist, labels, ids), float)
    where = np.array(ndimage.maximum_position(dist, labels, ids), float).reshape(-1, 3)
    pos = offset_nm + where * np.array(sampling)
    return pd.DataFrame({"id": ids.astype(np.uint64), "soma_radius_nm": radius, "soma_z_nm": pos[:, 0],
                         "soma_y_nm": pos[:, 1], "soma_x_nm": pos[:, 2], "is_neuron": radius >= min_radius_nm})


def somata_from_morphology(morph):
    """Soma table from ``morphology.parquet``, or None when it has no soma columns."""
    import pandas as pd

    id_col = "id" if "id" in morph.columns else ("segment_id" if "segment_id" in morph.columns else None)
    if id_col is None or not ({"soma_radius_nm", "has_soma"} & set(morph.columns)):
        return None
    out = pd.DataFrame({"id": morph[id_col].to_numpy(np.uint64)})
    for axis in "zyx":
        col = f"soma_{axis}_nm"
        out[col] = morph[col].to_numpy(float) if col in morph.columns else np.nan
    out["soma_radius_nm"] = morph["soma_radius_nm"].to_numpy(float) if "soma_radius_nm" in morph.columns else np.nan
    for col in ("soma_volume_nm3", "soma_truncated"):
        if col in morph.columns:
            out[col] = morph[col].to_numpy()
    if "has_soma" in morph.columns:
        out["is_neuron"] = morph["has_soma"].fillna(False).to_numpy(bool)
    else:
        out["is_neuron"] = (out["soma_radius_nm"].fillna(0) > 0).to_numpy()
    return out


def neuron_table(segments, synapses, somata, morph=None, voxel_size=(1, 1, 1), soma_source="morphology"):
    """``neurons.parquet`` rows (see the module docstring)."""
    import pandas as pd

    seg_ids = segments["id"].to_numpy(np.uint64) if segments is not None else np.zeros(0, np.uint64)
    partners = np.concatenate([synapses["pre_pt_root_id"].to_numpy(np.uint64),
                               synapses["post_pt_root_id"].to_numpy(np.uint64)])
    ids = np.unique(np.concatenate([seg_ids, partners, somata["id"].to_numpy(np.uint64)[somata["is_neuron"]]]))
    ids = ids[ids > 0]
    out = pd.DataFrame({"id": ids})
    soma = somata.drop_duplicates("id").set_index("id")
    is_neuron = soma["is_neuron"].reindex(ids).fillna(False).to_numpy(bool)
    out["kind"] = np.where(is_neuron, "neuron", "orphan")
    out["is_neuron"] = is_neuron
    for col in ("soma_z_nm", "soma_y_nm", "soma_x_nm", "soma_radius_nm", "soma_volume_nm3"):
        values = soma[col].reindex(ids).to_numpy(float) if col in soma else np.full(len(ids), np.nan)
        out[col] = np.where(is_neuron, values, np.nan)
    truncated = soma["soma_truncated"].reindex(ids) if "soma_truncated" in soma else pd.Series(False, index=ids)
    out["soma_truncated"] = is_neuron & truncated.fillna(False).to_numpy(bool)
    out["soma_source"] = np.where(is_neuron, soma_source, "")
    vox = segments.set_index("id")["voxels"].reindex(ids) if segments is not None and "voxels" in segments else None
    out["volume_voxels"] = vox.fillna(0).to_numpy(np.int64) if vox is not None else 0
    out["volume_nm3"] = out["volume_voxels"] * float(np.prod(voxel_size))
    out["n_pre"] = pd.Series(synapses["pre_pt_root_id"].to_numpy(np.uint64)).value_counts().reindex(ids).fillna(0).to_numpy(np.int64)
    out["n_post"] = pd.Series(synapses["post_pt_root_id"].to_numpy(np.uint64)).value_counts().reindex(ids).fillna(0).to_numpy(np.int64)
    if morph is not None:
        id_col = "id" if "id" in morph.columns else "segment_id"
        m = morph.drop_duplicates(id_col).set_index(id_col)
        for col in m.columns:
            if col.startswith("soma_") or col == "has_soma":
                continue
            if pd.api.types.is_numeric_dtype(m[col]) or pd.api.types.is_bool_dtype(m[col]):
                out[f"morph_{col}"] = m[col].reindex(ids).to_numpy()
    out["cell_type"] = pd.Series([None] * len(out), dtype="string")
    return out


def edge_tables(synapses, neurons, min_synapses: int = 1):
    """``(edges, edges_all)``: synapses grouped by (pre, post) segment; ``edges`` keeps neuron pairs only."""
    import pandas as pd

    cols = ["pre", "post", "n_synapses", "size_voxels", "size_nm2", "mean_score"]
    if len(synapses) == 0:
        empty = pd.DataFrame({c: np.zeros(0, np.uint64 if c in ("pre", "post") else float) for c in cols})
        return empty, empty.assign(pre_is_neuron=np.zeros(0, bool), post_is_neuron=np.zeros(0, bool))
    df = pd.DataFrame({"pre": synapses["pre_pt_root_id"].to_numpy(np.uint64),
                       "post": synapses["post_pt_root_id"].to_numpy(np.uint64),
                       "size": synapses["size"].to_numpy(np.int64),
                       "size_nm2": synapses["size_nm2"].to_numpy(float) if "size_nm2" in synapses else np.nan,
                       "score": synapses["score"].to_numpy(float)})
    agg = df.groupby(["pre", "post"], sort=True).agg(n_synapses=("size", "size"), size_voxels=("size", "sum"),
                                                     size_nm2=("size_nm2", "sum"), mean_score=("score", "mean"))
    edges_all = agg.reset_index()
    edges_all["n_synapses"] = edges_all["n_synapses"].astype(np.int64)
    neuron_ids = set(neurons.loc[neurons["is_neuron"], "id"].tolist())
    edges_all["pre_is_neuron"] = edges_all["pre"].isin(neuron_ids)
    edges_all["post_is_neuron"] = edges_all["post"].isin(neuron_ids)
    keep = edges_all["pre_is_neuron"] & edges_all["post_is_neuron"] & (edges_all["n_synapses"] >= min_synapses)
    edges = edges_all.loc[keep, cols].reset_index(drop=True)
    return edges, edges_all


def connectivity_matrix(edges, ids):
    """CSR matrix of synapse counts (rows pre, columns post) over ``ids`` (in that order)."""
    from scipy import sparse

    ids = np.asarray(ids, np.uint64)
    pos = {int(i): k for k, i in enumerate(ids)}
    rows = np.array([pos[int(p)] for p in edges["pre"]], int)
    cols = np.array([pos[int(p)] for p in edges["post"]], int)
    return sparse.csr_matrix((edges["n_synapses"].to_numpy(float), (rows, cols)), shape=(len(ids), len(ids)))


def save_matrix(path, matrix, ids) -> None:
    """Write a CSR matrix in ``scipy.sparse.save_npz`` layout plus an ``ids`` array (the row/column order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = matrix.tocsr()
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, format=np.array("csr"), shape=np.array(m.shape), data=m.data, indices=m.indices,
                        indptr=m.indptr, ids=np.asarray(ids, np.uint64))
    tmp.replace(path)


def plot_matrix(path, matrix, ids, title: str = "") -> None:
    """The connectivity matrix as a PNG: log-scaled synapse counts, axes labelled, n neurons and synapses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    dense = matrix.toarray()
    n = len(ids)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=120)
    shown = np.ma.masked_equal(dense, 0)
    if n and dense.max() > 0:
        im = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=1, vmax=max(dense.max(), 2)), interpolation="nearest")
        fig.colorbar(im, ax=ax, label="synapses")
    else:
        ax.imshow(np.zeros((max(n, 1), max(n, 1))), cmap="Greys")
    ax.set_xlabel("postsynaptic neuron (index, sorted by id)")
    ax.set_ylabel("presynaptic neuron (index, sorted by id)")
    ax.set_title(f"{title + ': ' if title else ''}n = {n} neurons, {int(dense.sum())} synapses, "
                 f"{int((dense > 0).sum())} edges", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def build(synapses_path, out_dir, segments_path=None, morphology_path=None, volume=None,
          segmentation: str = "segmentation", params: dict | None = None, name: str = "") -> dict:
    """Write ``neurons.parquet``, ``edges.parquet``, ``edges_all.parquet`` and ``connectome/`` under ``out_dir``."""
    import pandas as pd

    from connectomix import io, provenance
    from connectomix.blocks import atomic_write_json, atomic_write_parquet

    params = resolve(params)
    out_dir = Path(out_dir)
    synapses = pd.read_parquet(synapses_path)
    segments = pd.read_parquet(segments_path) if segments_path else None
    morph = pd.read_parquet(morphology_path) if morphology_path and Path(morphology_path).exists() else None
    voxel_size, offset = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    if volume is not None:
        meta = io.read_meta(volume, segmentation)
        voxel_size, offset = meta.voxel_size, meta.offset_nm
    somata = somata_from_morphology(morph) if morph is not None else None
    source = "morphology"
    if somata is None:
        if volume is None:
            raise ValueError("no soma columns in morphology.parquet and no --volume for the distance-transform fallback")
        source = "distance_transform"
        somata = soma_by_distance_transform(io.open_array(volume, segmentation), voxel_size, offset,
                                            params["soma_step_nm"], params["soma_min_radius_nm"])
    neurons = neuron_table(segments, synapses, somata, morph, voxel_size, source)
    edges, edges_all = edge_tables(synapses, neurons, params["min_synapses"])
    ids = neurons.loc[neurons["is_neuron"], "id"].to_numpy(np.uint64)
    matrix = connectivity_matrix(edges, ids)
    for table, fname in ((neurons, "neurons.parquet"), (edges, "edges.parquet"), (edges_all, "edges_all.parquet")):
        atomic_write_parquet(table, out_dir / fname)
    save_matrix(out_dir / "connectome" / "connectivity.npz", matrix, ids)
    plot_matrix(out_dir / "connectome" / "connectivity.png", matrix, ids, title=name)
    summary = {
        "neurons": int(neurons["is_neuron"].sum()), "orphans": int((~neurons["is_neuron"]).sum()),
        "synapses": int(len(synapses)), "edges": int(len(edges)),
        "synapses_between_neurons": int(edges["n_synapses"].sum()) if len(edges) else 0,
        "synapses_with_orphans": int(edges_all.loc[~(edges_all["pre_is_neuron"] & edges_all["post_is_neuron"]),
                                                   "n_synapses"].sum()) if len(edges_all) else 0,
        "soma_source": source,
        "provenance": provenance.record(params, provenance.input_digests(
            volume, [segmentation] if source == "distance_transform" else [],
            {"synapses": synapses_path, "segments": segments_path, "morphology": morphology_path})),
    }
    atomic_write_json(out_dir / "connectome" / "summary.json", summary)
    return summary


def add_arguments(parser) -> None:
    """Options of ``connectomix connectome``."""
    parser.add_argument("--synapses", required=True, help="synapses.parquet")
    parser.add_argument("--segments", help="segments.parquet (segment ids and voxel counts)")
    parser.add_argument("--morphology", help="morphology.parquet (soma detection, morphology features)")
    parser.add_argument("--volume", help="OME-Zarr with the segmentation (voxel size; soma fallback)")
    parser.add_argument("--segmentation", default="segmentation", help="segment label array in --volume")
    parser.add_argument("--params", default="{}", help="JSON of the `connectome:` config section")
    parser.add_argument("--out-dir", required=True, help="results/{dataset}")
    parser.add_argument("--name", default="", help="dataset name for the figure title")


def run(args) -> int:
    """Build the connectome tables and print the summary."""
    try:
        params = json.loads(args.params)
    except ValueError as error:
        raise ValueError(f"--params is not valid JSON ({error})") from None
    summary = build(args.synapses, args.out_dir, args.segments, args.morphology, args.volume, args.segmentation,
                    params, args.name)
    print(json.dumps({k: v for k, v in summary.items() if k != "provenance"}))
    return 0
