"""Connectome stage: neurons/edges/matrix, exports (neuPrint CSVs, GraphML, CAVE) and the edge metrics."""

import csv
import json

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from connectomix import connectome as con
from connectomix import synapses as syn
from connectomix.evaluate import connectome as ev
from connectomix.export import connectome as exp
from test_synapses import VS, toy_labels, toy_maps, write_toy


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("con")
    labels = toy_labels()
    write_toy(tmp / "v.zarr", labels, toy_maps(labels))
    syn.detect_synapses(tmp / "v.zarr", tmp / "work", {"min_size_voxels": 10}, block_shape=(8, 32, 32),
                        out_synapses=tmp / "synapses.parquet")
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    pd.DataFrame({"id": ids.astype(np.uint64), "voxels": counts}).to_parquet(tmp / "segments.parquet")
    morph = pd.DataFrame({"id": np.array([1, 2, 3, 4, 5], np.uint64), "cable_length_nm": [10.0, 20, 30, 40, 5],
                          "soma_z_nm": [200.0, 200, 200, 200, np.nan], "soma_y_nm": [100.0, 100, 100, 100, np.nan],
                          "soma_x_nm": [100.0, 400, 600, 900, np.nan], "soma_radius_nm": [90.0, 90, 90, 90, np.nan]})
    morph.to_parquet(tmp / "morphology.parquet")
    summary = con.build(tmp / "synapses.parquet", tmp, tmp / "segments.parquet", tmp / "morphology.parquet",
                        volume=tmp / "v.zarr", name="toy")
    export = exp.export_all(tmp / "export", tmp / "synapses.parquet", tmp / "neurons.parquet", tmp / "edges.parquet",
                            "toy", VS)
    return {"tmp": tmp, "summary": summary, "export": export, "labels": labels}


def test_neurons_edges_and_matrix(built):
    tmp = built["tmp"]
    neurons = pd.read_parquet(tmp / "neurons.parquet").set_index("id")
    assert neurons.loc[[1, 2, 3, 4], "kind"].tolist() == ["neuron"] * 4
    assert neurons.loc[5, "kind"] == "orphan" and not neurons.loc[5, "is_neuron"]
    assert built["summary"]["neurons"] == 4 and built["summary"]["orphans"] == 1
    assert neurons.loc[1, "volume_voxels"] == (built["labels"] == 1).sum()
    assert neurons.loc[1, "volume_nm3"] == pytest.approx(neurons.loc[1, "volume_voxels"] * 40 * 8 * 8)
    assert neurons.loc[1, "morph_cable_length_nm"] == 10.0
    assert "cell_type" in neurons.columns and neurons["cell_type"].isna().all()
    assert (neurons.loc[1, "n_pre"], neurons.loc[2, "n_post"], neurons.loc[2, "n_pre"]) == (1, 1, 1)
    edges = pd.read_parquet(tmp / "edges.parquet")
    assert sorted(zip(edges["pre"], edges["post"], edges["n_synapses"])) == [(1, 2, 1), (2, 3, 1)]
    assert (edges["size_voxels"] > 0).all() and (edges["size_nm2"] > 0).all()
    m = scipy.sparse.load_npz(tmp / "connectome" / "connectivity.npz")
    ids = np.load(tmp / "connectome" / "connectivity.npz")["ids"].tolist()
    assert ids == [1, 2, 3, 4] and m.shape == (4, 4)
    assert m[ids.index(1), ids.index(2)] == 1 and m[ids.index(2), ids.index(3)] == 1 and m.sum() == 2
    assert (tmp / "connectome" / "connectivity.png").stat().st_size > 1000


def test_graphml_reads_back(built):
    g = nx.read_graphml(built["tmp"] / "export" / "connectome.graphml", node_type=int)
    assert sorted(g.nodes) == [1, 2, 3, 4]
    assert g.is_directed()
    assert {(u, v): d["weight"] for u, v, d in g.edges(data=True)} == {(1, 2): 1, (2, 3): 1}
    assert g.nodes[2]["soma_x_nm"] == 400.0


def _read(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_neuprint_csvs(built):
    d = built["tmp"] / "export" / "neuprint"
    header, rows = _read(d / "Neuprint_Neurons_toy.csv")
    assert header[:3] == [":ID(Body-ID)", "bodyId:long", "pre:int"]
    assert "somaLocation:point{srid:9157}" in header and header[-1] == ":LABEL"
    by_id = {int(r[0]): dict(zip(header, r)) for r in rows}
    assert set(by_id) == {1, 2, 3, 4}  # neurons (orphan 5 has no synapse)
    assert by_id[2]["pre:int"] == "1" and by_id[2]["post:int"] == "1" and by_id[2]["synweight:int"] == "2"
    assert by_id[2]["somaLocation:point{srid:9157}"] == "{x:50, y:12, z:5}"  # 400/8, 100/8, 200/40 voxels
    assert by_id[1][":LABEL"] == "Segment;toy_Segment;Neuron;toy_Neuron"
    header, rows = _read(d / "Neuprint_Neuron_Connections_toy.csv")
    assert header == [":START_ID(Body-ID)", "weight:int", ":END_ID(Body-ID)"]
    assert sorted(rows) == [["1", "1", "2"], ["2", "1", "3"]]
    header, rows = _read(d / "Neuprint_Synapses_toy.csv")
    assert header == [":ID(Syn-ID)", "type:string", "confidence:float", "location:point{srid:9157}", ":LABEL"]
    assert len(rows) == 4 and sorted(r[1] for r in rows) == ["post", "post", "pre", "pre"]
    assert all(r[3].startswith("{x:") and r[4] == "Synapse;toy_Synapse" for r in rows)
    header, rows = _read(d / "Neuprint_Synapse_Connections_toy.csv")
    assert header == [":START_ID(Syn-ID)", ":END_ID(Syn-ID)"] and len(rows) == 2
    assert all(int(b) == int(a) + 1 for a, b in rows)
    header, rows = _read(d / "Neuprint_SynapseSet_to_SynapseSet_toy.csv")
    assert sorted(rows) == [["1_2_pre", "2_1_post"], ["2_3_pre", "3_2_post"]]
    header, rows = _read(d / "Neuprint_Neuron_to_SynapseSet_toy.csv")
    assert ["1", "1_2_pre"] in rows and ["2", "2_1_post"] in rows
    header, rows = _read(d / "Neuprint_SynapseSet_to_Synapses_toy.csv")
    assert len(rows) == 4


def test_cave_table(built):
    header, rows = _read(built["tmp"] / "export" / "cave_synapses.csv")
    assert header == exp.CAVE_COLUMNS
    table = pd.read_parquet(built["tmp"] / "synapses.parquet").set_index("id")
    for r in rows:
        rec = dict(zip(header, r))
        truth = table.loc[int(rec["id"])]
        assert json.loads(rec["ctr_pt_position"]) == pytest.approx(list(truth["ctr_pt_position"]))
        assert int(rec["pre_pt_root_id"]) == truth["pre_pt_root_id"]


def test_soma_fallback_distance_transform():
    labels = np.ones((30, 120, 120), np.uint64) * 2  # 2: a neurite-filled background slab
    zz, yy, xx = np.mgrid[:30, :120, :120]
    ball = ((zz - 15) * 40) ** 2 + ((yy - 60) * 8) ** 2 + ((xx - 60) * 8) ** 2 <= 400**2
    labels[ball] = 1
    labels[:, :, :8] = 3  # a thin sheet
    labels[:, ::10, 20:] = np.where(labels[:, ::10, 20:] == 2, 0, labels[:, ::10, 20:])  # membranes chop 2 thin
    table = con.soma_by_distance_transform(labels, VS, step_nm=40, min_radius_nm=300).set_index("id")
    assert table.loc[1, "is_neuron"] and not table.loc[3, "is_neuron"] and not table.loc[2, "is_neuron"]
    assert table.loc[1, "soma_radius_nm"] == pytest.approx(400, abs=60)
    assert table.loc[1, "soma_y_nm"] == pytest.approx(480, abs=50) and table.loc[1, "soma_x_nm"] == pytest.approx(480, abs=50)


def test_edge_metrics_with_mapping():
    gt = pd.DataFrame({"pre": [1, 1, 2, 3], "post": [2, 3, 3, 1], "n_synapses": [5, 1, 2, 3]})
    # predicted 11 -> 1, 12 -> 2, 13 and 14 -> 3 (a split), 15 unmapped
    mapping = pd.Series({11: 1, 12: 2, 13: 3, 14: 3})
    pred = pd.DataFrame({"pre": [11, 12, 14, 11, 15], "post": [12, 13, 11, 14, 11], "n_synapses": [4, 2, 3, 1, 1]})
    m = ev.evaluate(pred, gt, mapping)
    # mapped: (1,2):4, (2,3):2, (3,1):3, (1,3):1, (pred15,1):1 -> 4 true of 5 predicted, 4 of 4 true found
    assert m["n_true_edges"] == 4 and m["n_pred_edges"] == 5
    assert m["edge_precision"] == 0.8 and m["edge_recall"] == 1.0
    assert m["edge_f1"] == pytest.approx(2 * 0.8 / 1.8)
    assert m["synapse_count_pearson"] == pytest.approx(np.corrcoef([4, 2, 3, 1, 1], [5, 2, 3, 1, 0])[0, 1])
    strict = ev.evaluate(pred, gt, mapping, min_synapses=2)
    assert strict["n_gt_edges"] == 3 and strict["n_pred_edges"] == 3 and strict["edge_f1"] == 1.0
