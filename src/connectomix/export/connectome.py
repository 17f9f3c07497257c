"""Connectome exports: neuPrint import CSVs, GraphML and a CAVE-style synapse table.

**neuPrint** (``export/neuprint/``): CSV files for ``neo4j-admin import`` in the layout of the neuPrint snapshot
exports (Neuprint_*_{dataset}.csv with typed headers). Reconstructed from public neuPrint / flyem-snapshot exports
as best known, not validated against a running neuPrint loader:

* ``Neuprint_Meta_{ds}.csv``: ``:ID(Meta-ID),dataset:string,voxelSize:float[],voxelUnits:string,totalPreCount:long,
  totalPostCount:long,:LABEL``
* ``Neuprint_Neurons_{ds}.csv``: ``:ID(Body-ID),bodyId:long,pre:int,post:int,upstream:int,downstream:int,
  synweight:int,status:string,statusLabel:string,type:string,instance:string,size:long,
  somaLocation:point{srid:9157},somaRadius:float,:LABEL`` (labels ``Segment;{ds}_Segment``, plus
  ``Neuron;{ds}_Neuron`` for neurons; orphan fragments with synapses are Segments only)
* ``Neuprint_Neuron_Connections_{ds}.csv``: ``:START_ID(Body-ID),weight:int,:END_ID(Body-ID)``
* ``Neuprint_Synapses_{ds}.csv``: ``:ID(Syn-ID),type:string,confidence:float,location:point{srid:9157},:LABEL``
  (one ``pre`` node (T-bar side) and one ``post`` node (PSD side) per synapse: ids ``2 * cleft id`` and
  ``2 * cleft id + 1``)
* ``Neuprint_Synapse_Connections_{ds}.csv``: ``:START_ID(Syn-ID),:END_ID(Syn-ID)`` (pre node -> post node)
* ``Neuprint_SynapseSet_{ds}.csv``: ``:ID(SynSet-ID),:LABEL``; a set per (body, partner, side), id
  ``{body}_{partner}_pre`` / ``{body}_{partner}_post``
* ``Neuprint_Neuron_to_SynapseSet_{ds}.csv``: ``:START_ID(Body-ID),:END_ID(SynSet-ID)``
* ``Neuprint_SynapseSet_to_Synapses_{ds}.csv``: ``:START_ID(SynSet-ID),:END_ID(Syn-ID)``
* ``Neuprint_SynapseSet_to_SynapseSet_{ds}.csv``: ``:START_ID(SynSet-ID),:END_ID(SynSet-ID)`` (pre set -> post set)

Points are ``{x:X, y:Y, z:Z}`` in voxels of the dataset (neuPrint's convention; the voxel size is in the Meta
file), rounded to integers.

**GraphML** (``export/connectome.graphml``): a directed graph, nodes = neurons (attributes: soma position nm, soma
radius, volume, cell type, n_pre, n_post), edges pre -> post with ``weight`` = synapse count and ``size_nm2``.

**CAVE** (``export/cave_synapses.csv``): the ``synapses.parquet`` columns with the positions written as ``[x, y, z]``
nm lists (``id, pre_pt_position, post_pt_position, ctr_pt_position, pre_pt_root_id, post_pt_root_id, size,
size_nm2, score``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from connectomix.blocks import atomic_write_json


def _point(xyz) -> str:
    x, y, z = (int(round(float(v))) for v in xyz)
    return f"{{x:{x}, y:{y}, z:{z}}}"


def _to_voxels(xyz_nm, voxel_size) -> tuple:
    """[x, y, z] nm -> (x, y, z) voxels for (z, y, x) voxel sizes."""
    return tuple(float(v) / s for v, s in zip(xyz_nm, (voxel_size[2], voxel_size[1], voxel_size[0])))


def _write_csv(path: Path, header: list[str], rows) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            n += 1
    tmp.replace(path)
    return n


def write_neuprint(out_dir, synapses, neurons, edges, dataset: str = "connectomix", voxel_size=(1.0, 1.0, 1.0)) -> dict:
    """Write the neuPrint CSVs (see the module docstring). Returns {file name: data rows}."""
    out_dir = Path(out_dir)
    ds = dataset
    counts = {}
    syn = synapses.sort_values("id").reset_index(drop=True)
    pre_ids = syn["pre_pt_root_id"].to_numpy(np.uint64)
    post_ids = syn["post_pt_root_id"].to_numpy(np.uint64)
    neuron_ids = set(neurons.loc[neurons["is_neuron"], "id"].tolist())
    bodies = neurons[neurons["is_neuron"] | neurons["id"].isin(set(pre_ids.tolist()) | set(post_ids.tolist()))]
    bodies = bodies.sort_values("id")
    # weights per body: downstream = outgoing synapse count (one PSD per T-bar here), upstream = incoming
    out_w = {int(k): int(v) for k, v in zip(*np.unique(pre_ids, return_counts=True))}
    in_w = {int(k): int(v) for k, v in zip(*np.unique(post_ids, return_counts=True))}

    def f(name):
        return out_dir / f"Neuprint_{name}_{ds}.csv"

    counts[f("Meta").name] = _write_csv(
        f("Meta"), [":ID(Meta-ID)", "dataset:string", "voxelSize:float[]", "voxelUnits:string",
                    "totalPreCount:long", "totalPostCount:long", ":LABEL"],
        [[ds, ds, ";".join(str(float(v)) for v in (voxel_size[2], voxel_size[1], voxel_size[0])), "nanometers",
          len(syn), len(syn), f"Meta;{ds}_Meta"]])

    def neuron_rows():
        for r in bodies.itertuples():
            bid = int(r.id)
            is_neuron = bid in neuron_ids
            soma = ""
            if is_neuron and np.isfinite(r.soma_x_nm):
                soma = _point(_to_voxels((r.soma_x_nm, r.soma_y_nm, r.soma_z_nm), voxel_size))
            radius = "" if not is_neuron or not np.isfinite(r.soma_radius_nm) else f"{r.soma_radius_nm / voxel_size[2]:.3f}"
            cell_type = "" if r.cell_type is None or (isinstance(r.cell_type, float)) or str(r.cell_type) == "<NA>" \
                else str(r.cell_type)
            labels = f"Segment;{ds}_Segment" + (f";Neuron;{ds}_Neuron" if is_neuron else "")
            down, up = out_w.get(bid, 0), in_w.get(bid, 0)
            yield [bid, bid, down, up, up, down, up + down, "Traced" if is_neuron else "Orphan",
                   "Roughly traced" if is_neuron else "Orphan", cell_type, cell_type, int(r.volume_voxels), soma,
                   radius, labels]

    counts[f("Neurons").name] = _write_csv(
        f("Neurons"), [":ID(Body-ID)", "bodyId:long", "pre:int", "post:int", "upstream:int", "downstream:int",
                       "synweight:int", "status:string", "statusLabel:string", "type:string", "instance:string",
                       "size:long", "somaLocation:point{srid:9157}", "somaRadius:float", ":LABEL"], neuron_rows())
    body_set = set(bodies["id"].tolist())
    pair_w = {}
    for a, b in zip(pre_ids.tolist(), post_ids.tolist()):
        pair_w[(a, b)] = pair_w.get((a, b), 0) + 1
    counts[f("Neuron_Connections").name] = _write_csv(
        f("Neuron_Connections"), [":START_ID(Body-ID)", "weight:int", ":END_ID(Body-ID)"],
        ([a, w, b] for (a, b), w in sorted(pair_w.items()) if a in body_set and b in body_set))

    def synapse_rows():
        for r in syn.itertuples():
            cid = int(r.id)
            conf = f"{float(r.score):.4f}"
            yield [2 * cid, "pre", conf, _point(_to_voxels(r.pre_pt_position, voxel_size)), f"Synapse;{ds}_Synapse"]
            yield [2 * cid + 1, "post", conf, _point(_to_voxels(r.post_pt_position, voxel_size)),
                   f"Synapse;{ds}_Synapse"]

    counts[f("Synapses").name] = _write_csv(
        f("Synapses"), [":ID(Syn-ID)", "type:string", "confidence:float", "location:point{srid:9157}", ":LABEL"],
        synapse_rows())
    cids = syn["id"].to_numpy(np.uint64).astype(object)
    counts[f("Synapse_Connections").name] = _write_csv(
        f("Synapse_Connections"), [":START_ID(Syn-ID)", ":END_ID(Syn-ID)"],
        ([2 * int(c), 2 * int(c) + 1] for c in cids))
    pairs = sorted(pair_w)
    counts[f("SynapseSet").name] = _write_csv(
        f("SynapseSet"), [":ID(SynSet-ID)", ":LABEL"],
        ([s, f"SynapseSet;{ds}_SynapseSet"] for a, b in pairs for s in (f"{a}_{b}_pre", f"{b}_{a}_post")))
    counts[f("Neuron_to_SynapseSet").name] = _write_csv(
        f("Neuron_to_SynapseSet"), [":START_ID(Body-ID)", ":END_ID(SynSet-ID)"],
        ([x, s] for a, b in pairs for x, s in ((a, f"{a}_{b}_pre"), (b, f"{b}_{a}_post"))))
    counts[f("SynapseSet_to_Synapses").name] = _write_csv(
        f("SynapseSet_to_Synapses"), [":START_ID(SynSet-ID)", ":END_ID(Syn-ID)"],
        ([s, n] for c, a, b in zip(cids, pre_ids.tolist(), post_ids.tolist())
         for s, n in ((f"{a}_{b}_pre", 2 * int(c)), (f"{b}_{a}_post", 2 * int(c) + 1))))
    counts[f("SynapseSet_to_SynapseSet").name] = _write_csv(
        f("SynapseSet_to_SynapseSet"), [":START_ID(SynSet-ID)", ":END_ID(SynSet-ID)"],
        ([f"{a}_{b}_pre", f"{b}_{a}_post"] for a, b in pairs))
    return counts


def to_graph(neurons, edges):
    """networkx DiGraph: nodes = neurons (int ids), edges with ``weight`` (synapse count) and ``size_nm2``."""
    import networkx as nx

    g = nx.DiGraph()
    for r in neurons[neurons["is_neuron"]].itertuples():
        cell_type = r.cell_type if isinstance(r.cell_type, str) else ""
        g.add_node(int(r.id), soma_x_nm=float(r.soma_x_nm), soma_y_nm=float(r.soma_y_nm), soma_z_nm=float(r.soma_z_nm),
                   soma_radius_nm=float(r.soma_radius_nm), volume_voxels=int(r.volume_voxels), cell_type=cell_type,
                   n_pre=int(r.n_pre), n_post=int(r.n_post))
    for r in edges.itertuples():
        g.add_edge(int(r.pre), int(r.post), weight=int(r.n_synapses), size_nm2=float(r.size_nm2))
    return g


def write_graphml(path, neurons, edges) -> None:
    """Write :func:`to_graph` as GraphML (read it with ``networkx.read_graphml(path, node_type=int)``)."""
    import networkx as nx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    nx.write_graphml(to_graph(neurons, edges), tmp)
    tmp.replace(path)


CAVE_COLUMNS = ["id", "pre_pt_position", "post_pt_position", "ctr_pt_position", "pre_pt_root_id", "post_pt_root_id",
                "size", "size_nm2", "score"]


def write_cave(path, synapses) -> int:
    """The CAVE-style synapse table as CSV (positions as ``[x, y, z]`` nm lists)."""
    def rows():
        for r in synapses[CAVE_COLUMNS].itertuples(index=False):
            yield [int(r.id), json.dumps([float(v) for v in r.pre_pt_position]),
                   json.dumps([float(v) for v in r.post_pt_position]), json.dumps([float(v) for v in r.ctr_pt_position]),
                   int(r.pre_pt_root_id), int(r.post_pt_root_id), int(r.size), float(r.size_nm2), float(r.score)]

    return _write_csv(Path(path), CAVE_COLUMNS, rows())


def export_all(out_dir, synapses_path, neurons_path, edges_path, dataset="connectomix", voxel_size=(1, 1, 1)) -> dict:
    """All three exports under ``out_dir``; returns a summary (files and rows), also written as ``export.json``."""
    import pandas as pd

    out_dir = Path(out_dir)
    synapses = pd.read_parquet(synapses_path)
    neurons = pd.read_parquet(neurons_path)
    edges = pd.read_parquet(edges_path)
    summary = {"neuprint": write_neuprint(out_dir / "neuprint", synapses, neurons, edges, dataset, voxel_size)}
    write_graphml(out_dir / "connectome.graphml", neurons, edges)
    summary["graphml"] = {"nodes": int(neurons["is_neuron"].sum()), "edges": int(len(edges))}
    summary["cave"] = write_cave(out_dir / "cave_synapses.csv", synapses)
    atomic_write_json(out_dir / "export.json", summary)
    return summary


def add_arguments(subparsers) -> None:
    """The ``connectomix export connectome`` action."""
    p = subparsers.add_parser("connectome", help="neuPrint CSVs, GraphML and a CAVE-style synapse table")
    p.add_argument("--synapses", required=True, help="synapses.parquet")
    p.add_argument("--neurons", required=True, help="neurons.parquet")
    p.add_argument("--edges", required=True, help="edges.parquet")
    p.add_argument("--out-dir", required=True, help="folder for the exports (results/{dataset}/export)")
    p.add_argument("--dataset-name", default="connectomix", help="neuPrint dataset name")
    p.add_argument("--voxel-size", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("Z", "Y", "X"),
                   help="voxel size, nm (neuPrint points are in voxels)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Write the exports and print the summary."""
    summary = export_all(args.out_dir, args.synapses, args.neurons, args.edges, args.dataset_name, args.voxel_size)
    print(json.dumps(summary, indent=1))
    return 0
