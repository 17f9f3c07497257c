"""Segmentation, learned edge scores (agglomerate.method 'learned'): z contact counts, edge features, the edge
model (training, file checks) and the learned agglomeration end to end."""

import json

import numpy as np
import pytest

from connectomix import config, io
from connectomix.evaluate.segmentation import metrics
from connectomix.segment import edges, stitch
from connectomix.segment.agglomerate import agglomerate
from connectomix.segment.rag import volume_rag
from connectomix.segment.train_edges import train_edges
from connectomix.synthetic import segment as syn

VOXEL = (40, 8, 8)
CHUNKS = (8, 16, 16)


def _stack() -> np.ndarray:
    """Sections 0-1: pieces 1 | 2 side by side; sections 2-3: piece 3 under both, and 4 over half of 3 in 3."""
    f = np.zeros((4, 6, 6), np.uint64)
    f[:2, :, :3], f[:2, :, 3:], f[2:] = 1, 2, 3
    f[3, :3] = 4
    return f


def test_count_z_counts_the_contacts_between_sections():
    affs = np.random.default_rng(0).integers(0, 256, (3, 4, 6, 6)).astype(np.uint8)
    rag = volume_rag(_stack(), affs, syn.NN_OFFSETS)
    assert rag.u.tolist() == [1, 1, 2, 3] and rag.v.tolist() == [2, 3, 3, 4]
    # 1-2 touch within sections only; 1-3 and 2-3 across one section face (18 voxels each); 3-4 both ways
    assert rag.count_z.tolist() == [0, 18, 18, 18]
    assert rag.count.tolist() == [12, 18, 18, 24]


def test_edge_features_compare_a_link_with_the_pieces_other_links():
    affs = np.full((3, 4, 6, 6), 200, np.uint8)
    rag = volume_rag(_stack(), affs, syn.NN_OFFSETS)
    x = edges.edge_features(rag)
    col = {name: x[:, i] for i, name in enumerate(edges.FEATURE_NAMES)}
    assert col["z"].tolist() == [0, 1, 1, 1]  # 3-4: 18 of its 24 contacts lie between sections
    assert np.allclose(col["mean"], 200 / 255) and np.allclose(col["q50"], 200 / 255)
    # piece 3 sends half its z contacts to 1 and half to 2 (and 18 to 4): 1's only z link is 3
    i13 = 1
    assert col["z_share_hi"][i13] == pytest.approx(1.0) and col["z_share_lo"][i13] == pytest.approx(18 / 54)
    assert np.isfinite(x).all() and x.dtype == np.float32


def test_edge_features_refuse_a_graph_without_z_counts_or_histograms():
    rag = volume_rag(_stack(), np.zeros((3, 4, 6, 6), np.uint8), syn.NN_OFFSETS)
    rag.count_z = np.zeros(0, np.uint64)
    with pytest.raises(ValueError, match="count_z"):
        edges.edge_features(rag)


def test_fit_learns_a_rule_and_the_saved_model_predicts_the_same(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, len(edges.FEATURE_NAMES))).astype(np.float32)
    truth = (x[:, 5] + 0.5 * x[:, 9] > 0).astype(float)  # a rule on two features
    model = edges.fit(x[:2000], truth[:2000], hidden=(16,), epochs=300)
    accuracy = ((model.predict(x[2000:]) >= 0.5) == truth[2000:]).mean()
    assert accuracy > 0.95, accuracy
    model.save(tmp_path / "m.json")
    again = edges.EdgeModel.load(tmp_path / "m.json")
    assert np.allclose(again.predict(x), model.predict(x))


def test_edge_model_files_are_checked(tmp_path):
    bad = tmp_path / "bad.json"
    with pytest.raises(FileNotFoundError, match="bad.json"):
        edges.EdgeModel.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not JSON"):
        edges.EdgeModel.load(bad)
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="format"):
        edges.EdgeModel.load(bad)
    x = np.random.default_rng(2).normal(size=(200, len(edges.FEATURE_NAMES)))
    record = edges.fit(x, (x[:, 0] > 0).astype(float), hidden=(4,), epochs=5).record
    bad.write_text(json.dumps({**record, "features": ["mean"]}))
    with pytest.raises(ValueError, match="retrain"):
        edges.EdgeModel.load(bad)
    record["layers"][0][1] = record["layers"][0][1][:-1]  # a bias one short
    bad.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="bias"):
        edges.EdgeModel.load(bad)


def test_learned_method_needs_a_model():
    rag = volume_rag(_stack(), np.zeros((3, 4, 6, 6), np.uint8), syn.NN_OFFSETS)
    with pytest.raises(ValueError, match="edge model"):
        agglomerate(rag, config.resolve("segment", {"agglomerate": {"method": "learned"}}))
    with pytest.raises(ValueError, match="edge_model"):
        config.validate({"datasets": {"p": {"phantom": {}, "voxel_size": [40, 8, 8]}}, "segment": {"agglomerate": {"method": "learned"}}})


def _dataset(tmp_path, name, seed, params):
    gt = syn.voronoi_labels((16, 96, 96), 40, seed=seed, anisotropy=VOXEL)
    affs = syn.degrade(syn.affinities_from_labels(gt), seed=seed, noise=0.25)
    root = tmp_path / name / "volume.zarr"
    syn.write_test_volume(root, affs, VOXEL, (8, 32, 32), gt=gt)
    stitch.segment_volume(root, tmp_path / name / "segment", params, (8, 48, 48), CHUNKS)
    return gt, np.asarray(io.open_array(root, "segmentation")[...])


def test_a_trained_edge_model_segments_an_unseen_volume(tmp_path):
    _dataset(tmp_path, "train", 1, {})
    model = tmp_path / "edges.json"
    summary = train_edges([tmp_path / "train"], model, epochs=200)
    assert summary["edges"] > 100 and model.exists()
    gt, mean_seg = _dataset(tmp_path, "mean", 5, {})
    params = {"agglomerate": {"method": "learned", "edge_model": str(model), "threshold": 0.5}}
    _, learned_seg = _dataset(tmp_path, "learned", 5, params)
    learned, mean = metrics(gt, learned_seg), metrics(gt, mean_seg)
    assert learned["voi"] < 0.8 and learned["voi"] < mean["voi"] + 0.1, (learned, mean)
    work = tmp_path / "learned" / "segment"
    setup = json.loads((work / "setup.json").read_text())
    assert setup["edge_model"]["path"] == str(model)
    assert (work / stitch.EDGE_MODEL).read_text() == model.read_text()  # the copy the agglomeration read


def test_setup_refuses_an_edge_model_of_another_unet(tmp_path):
    x = np.random.default_rng(3).normal(size=(100, len(edges.FEATURE_NAMES)))
    model = edges.fit(x, (x[:, 0] > 0).astype(float), hidden=(4,), epochs=5,
                      provenance={"affinities_weights_sha256": ["a" * 64]})
    model.save(tmp_path / "m.json")
    params = config.resolve("segment", {"agglomerate": {"method": "learned", "edge_model": str(tmp_path / "m.json")}})
    with pytest.raises(ValueError, match="retrain it on this U-Net"):
        stitch._install_edge_model(params, tmp_path / "w", "b" * 64)
    assert stitch._install_edge_model(params, tmp_path / "w", "a" * 64)["sha256"]


def test_the_shipped_edge_model_is_found_from_another_working_directory(tmp_path, monkeypatch):
    from connectomix.workflow.predict import locate_shipped_models

    repo = config.schema_path().parents[3]
    monkeypatch.chdir(tmp_path)
    cfg = config.validate({"datasets": {"p": {"phantom": {}, "voxel_size": [40, 8, 8]}},
                           "segment": {"agglomerate": {"method": "learned",
                                                       "edge_model": "models/phantom/edges.json"}}})
    locate_shipped_models(cfg, repo)
    assert cfg["segment"]["agglomerate"]["edge_model"] == str(repo / "models/phantom/edges.json")
    assert cfg["predict"]["checkpoint"] == str(repo / "models/phantom")
    assert cfg["synapses"]["partner_model"] == str(repo / "models/synapse_partners.json")
    edges.EdgeModel.load(cfg["segment"]["agglomerate"]["edge_model"])  # the shipped model reads
