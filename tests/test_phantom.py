"""The ground-truth phantom: dense, EM-like, connected neurons, synapses on contacts, like-to-like wiring,
functional tables in their own frame, deterministic, written per the data contract."""

import json

import cc3d
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from connectomix import config as cmx_config
from connectomix import io
from connectomix.phantom import PhantomParams, generate, write

VOXEL = (40.0, 8.0, 8.0)
SMALL = {"shape": [16, 160, 160], "n_neurons": 8, "soma_radius_nm": 170.0, "n_synapses": 16,
         "n_orphan_synapses": 10, "extra_rois": 3, "seed": 3}
WIRING = {"shape": [16, 224, 224], "n_neurons": 12, "soma_radius_nm": 170.0, "n_synapses": 50,
          "n_orphan_synapses": 5}


@pytest.fixture(scope="module")
def ph():
    return generate(PhantomParams.from_dict(SMALL), voxel_size=VOXEL)


def _borders(labels):
    """Voxels whose label differs from an in-plane neighbour (both sides)."""
    border = np.zeros(labels.shape, bool)
    for axis in (1, 2):
        diff = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        border[tuple(lo)] |= diff
        border[tuple(hi)] |= diff
    return border


def test_arrays_and_tables_follow_the_contract(ph):
    assert ph.raw.shape == ph.labels.shape == ph.clefts.shape == ph.mito.shape == tuple(SMALL["shape"])
    assert (ph.raw.dtype, ph.labels.dtype, ph.clefts.dtype, ph.mito.dtype) == (np.uint8, np.uint64, np.uint64, np.uint8)
    assert set(np.unique(ph.mito)) <= {0, 1} and ph.mito.any()
    assert list(ph.neurons.columns) == ["id", "cell_class", "soma_z_nm", "soma_y_nm", "soma_x_nm", "soma_radius_nm",
                                        "pref_orientation_deg", "tuning_width_deg", "imaged"]
    assert list(ph.objects.columns) == ["id", "kind", "neuron_id", "voxels"]
    assert list(ph.synapses.columns) == ["id", "pre", "post", "ctr_z_nm", "ctr_y_nm", "ctr_x_nm", "pre_z_nm",
                                         "pre_y_nm", "pre_x_nm", "post_z_nm", "post_y_nm", "post_x_nm", "cleft_voxels"]
    assert list(ph.edges.columns) == ["pre", "post", "n_synapses"]
    assert list(ph.rois.columns) == ["roi_id", "x_um", "y_um", "z_um", "neuron_id"]
    assert list(ph.stimuli.columns) == ["stimulus_id", "orientation_deg"]
    # every label in the volume is an object, with its voxel count; neurons are objects of kind neuron
    counts = np.bincount(ph.labels.ravel().astype(np.int64))
    present = np.flatnonzero(counts[1:]) + 1
    assert sorted(ph.objects.id.astype(int)) == present.tolist()
    assert (ph.objects.voxels.to_numpy() == counts[ph.objects.id.astype(int)]).all()
    kinds = ph.objects.set_index("id")
    assert set(kinds.kind) <= {"neuron", "axon", "glia"} and {"axon", "glia"} <= set(kinds.kind)
    assert (kinds.loc[ph.neurons.id, "kind"] == "neuron").all()
    assert (kinds.neuron_id == np.where(kinds.kind == "neuron", kinds.index, 0)).all()


def test_dense_neuropil_with_little_extracellular_space(ph):
    density = np.count_nonzero(ph.labels) / ph.labels.size
    assert density >= 0.90
    assert 0.0 < 1 - density <= 0.10
    assert abs(ph.stats["density"] - density) < 1e-9
    assert len(ph.objects) > 50  # neuropil: many processes, not a few tubes


def test_membranes_darker_than_cytoplasm(ph):
    raw = ph.raw.astype(float)
    border = _borders(ph.labels)
    interior = (ph.labels > 0) & ~ndimage.binary_dilation(border, np.ones((1, 7, 7), bool)) & (ph.mito == 0)
    membrane, cytoplasm = raw[border & (ph.labels > 0)].mean(), raw[interior].mean()
    assert membrane < 0.8 * cytoplasm
    # membranes are thin: 1-3 voxels, a minority of the section
    assert 0.05 < border.mean() < 0.45


def test_adjacent_sections_correlate_more_than_far_ones(ph):
    raw = ph.raw.astype(float)

    def r(a, b):
        return np.corrcoef(raw[a].ravel(), raw[b].ravel())[0, 1]

    near = np.mean([r(z, z + 1) for z in range(raw.shape[0] - 1)])
    far = np.mean([r(z, z + 12) for z in range(raw.shape[0] - 12)])
    assert near > 0.2
    assert near > far + 0.1


def test_sections_differ_in_brightness(ph):
    means = ph.raw.reshape(ph.raw.shape[0], -1).mean(axis=1)
    assert means.std() > 0.5  # per-section gain/offset jitter


def test_neurons_have_a_soma_inside_and_are_one_connected_label(ph):
    shape_nm = np.array(ph.labels.shape) * VOXEL
    cc = cc3d.connected_components(ph.labels, connectivity=6, out_dtype=np.uint64)
    for row in ph.neurons.itertuples():
        centre = np.array([row.soma_z_nm, row.soma_y_nm, row.soma_x_nm])
        assert np.all(centre - row.soma_radius_nm * np.array([0.5, 1, 1]) >= 0)
        assert np.all(centre + row.soma_radius_nm * np.array([0.5, 1, 1]) <= shape_nm)
        voxel = tuple(np.round(centre / VOXEL).astype(int))
        assert ph.labels[voxel] == row.id
        pieces = np.unique(cc[ph.labels == row.id])
        assert len(pieces) == 1, f"neuron {row.id} is in {len(pieces)} 6-connected pieces"


def test_somata_are_whole_no_neurite_passes_through_them(ph):
    """Other objects wrap around a soma: inside 80 % of its radius every labelled voxel is the neuron's own, so
    its widest inscribed sphere (what soma detection looks for) is about the soma radius."""
    grid = np.indices(ph.labels.shape, dtype=np.float32).reshape(3, -1).T * np.asarray(VOXEL, np.float32)
    for row in ph.neurons.itertuples():
        centre = np.array([row.soma_z_nm, row.soma_y_nm, row.soma_x_nm], np.float32)
        inside = np.linalg.norm(grid - centre, axis=1) < 0.8 * row.soma_radius_nm
        found = ph.labels.ravel()[inside]
        assert set(np.unique(found[found > 0]).tolist()) == {row.id}, f"neuron {row.id}"


def test_cell_classes_differ_in_morphology(ph):
    """Inhibitory-like: smaller soma and less arbor in the volume (measured on the labels)."""
    border = _borders(ph.labels) | (ph.labels == 0)
    edt = np.stack([ndimage.distance_transform_edt(~b) for b in border])  # in-plane distance to the outline
    inscribed = ndimage.maximum(edt, ph.labels, ph.neurons.id.astype(int))
    voxels = ph.objects.set_index("id").loc[ph.neurons.id, "voxels"].to_numpy()
    is_inh = (ph.neurons.cell_class == "inhibitory").to_numpy()
    assert 0 < is_inh.sum() < len(is_inh)
    assert np.mean(np.asarray(inscribed)[is_inh]) < 0.85 * np.mean(np.asarray(inscribed)[~is_inh])
    assert voxels[is_inh].mean() < voxels[~is_inh].mean()


def test_hard_cases_thin_profiles_and_oblique_processes(ph):
    """Thin axon profiles (<= 4 voxels across in-plane) are common; many objects run oblique to the sections."""
    border = _borders(ph.labels) | (ph.labels == 0)
    thin = profiles = 0
    for z in range(ph.labels.shape[0]):
        inner = ndimage.distance_transform_edt(~border[z])  # 1 on the outline, larger inside
        lab = ph.labels[z].astype(np.int64)
        widest = ndimage.maximum(inner, lab, np.unique(lab[lab > 0]))
        thin += int(np.sum(np.asarray(widest) <= 2))  # profiles at most ~4 voxels across
        profiles += len(widest)
    assert thin >= 0.1 * profiles
    # oblique: an object's in-plane centroid moves between sections by more than its own radius
    moved = spanning = 0
    for oid in ph.objects.id.astype(int)[:300]:
        zs, ys, xs = np.nonzero(ph.labels == oid)
        if np.ptp(zs) < 3:
            continue
        spanning += 1
        top, bottom = zs == zs.min(), zs == zs.max()
        shift = np.hypot(ys[top].mean() - ys[bottom].mean(), xs[top].mean() - xs[bottom].mean())
        moved += shift > 20
    assert moved >= 0.3 * spanning


def test_synapse_count_and_clefts_on_the_contacts(ph):
    n = SMALL["n_neurons"]
    syn = ph.synapses
    assert (syn.pre.astype(int) <= n).sum() == SMALL["n_synapses"]
    assert (syn.pre.astype(int) > n).sum() == SMALL["n_orphan_synapses"]
    assert sorted(np.unique(ph.clefts[ph.clefts > 0]).tolist()) == sorted(syn.id.astype(int).tolist())
    counts = np.bincount(ph.clefts.ravel().astype(np.int64))
    kinds = ph.objects.set_index("id").kind
    for row in syn.itertuples():
        assert row.pre != row.post and kinds[row.post] == "neuron"
        sheet = ph.clefts == row.id
        assert counts[row.id] == row.cleft_voxels
        assert 10 <= row.cleft_voxels <= 800
        around = ndimage.binary_dilation(sheet, ndimage.generate_binary_structure(3, 1))
        touching = set(np.unique(ph.labels[around]).tolist())
        assert {row.pre, row.post} <= touching
        # pre/post points lie inside their objects, next to the cleft
        for side, label in (("pre", row.pre), ("post", row.post)):
            point = np.array([getattr(row, f"{side}_{a}_nm") for a in "zyx"])
            assert ph.labels[tuple(np.round(point / VOXEL).astype(int))] == label
            ctr = np.array([row.ctr_z_nm, row.ctr_y_nm, row.ctr_x_nm])
            assert np.linalg.norm(point - ctr) < 250
    edges = syn[syn.pre.astype(int) <= n].groupby(["pre", "post"]).size()
    assert dict(edges) == {(a, b): c for a, b, c in ph.edges.itertuples(index=False)}


def _like_to_like_slope(neurons, edges):
    """Normalized least-squares slope of synapse count against cos(2 dtheta) over ordered neuron pairs."""
    x, y = _pairs(neurons, edges)
    return np.polyfit(x, y, 1)[0] / y.mean()


def _pairs(neurons, edges):
    theta = dict(zip(neurons.id.astype(int), neurons.pref_orientation_deg))
    weight = {(int(a), int(b)): c for a, b, c in edges.itertuples(index=False)}
    pairs = [(a, b) for a in theta for b in theta if a != b]
    x = np.cos(2 * np.deg2rad([theta[a] - theta[b] for a, b in pairs]))
    return x, np.array([weight.get(p, 0) for p in pairs], float)


def test_like_to_like_rule_is_recovered_from_the_edges():
    """Same geometry, strengths -3, 0, 3: the slope follows the sign of the rule and is ~flat at 0.

    With ~50 synapses among 12 neurons one block's slope varies by ~0.3 between seeds (which pairs touch at all
    is geometry, blind to tuning), so each strength pools the same two blocks and the rule is measured against
    the tuning-blind wiring of those blocks. Pools of seeds (1, 2), (3, 4), (5, 6): k=3 minus k=0 is 0.47-0.61,
    k=0 minus k=-3 0.39-0.51, k=0 itself 0.12-0.43.
    """
    pooled = {}
    for strength in (-3.0, 0.0, 3.0):
        xs, ys = [], []
        for seed in (1, 2):
            wired = generate(PhantomParams.from_dict({**WIRING, "seed": seed, "like_to_like": strength}),
                             voxel_size=VOXEL)
            assert (wired.synapses.pre.astype(int) <= WIRING["n_neurons"]).sum() >= 0.9 * WIRING["n_synapses"]
            assert wired.stats["like_to_like_slope"] == pytest.approx(_like_to_like_slope(wired.neurons, wired.edges))
            x, y = _pairs(wired.neurons, wired.edges)
            xs.append(x)
            ys.append(y)
        x, y = np.concatenate(xs), np.concatenate(ys)
        pooled[strength] = np.polyfit(x, y, 1)[0] / y.mean()
    assert pooled[3.0] > 0.4 and pooled[-3.0] < 0
    assert abs(pooled[0.0]) < 0.4
    assert pooled[3.0] - pooled[0.0] > 0.4 and pooled[0.0] - pooled[-3.0] > 0.3


def test_same_seed_same_phantom_other_seed_other_phantom(ph):
    again = generate(PhantomParams.from_dict(SMALL), voxel_size=VOXEL)
    for name in ("raw", "labels", "clefts", "mito", "responses", "affine"):
        assert np.array_equal(getattr(ph, name), getattr(again, name)), name
    for name in ("neurons", "objects", "synapses", "edges", "rois", "stimuli"):
        pd.testing.assert_frame_equal(getattr(ph, name), getattr(again, name))
    other = generate(PhantomParams.from_dict({**SMALL, "seed": SMALL["seed"] + 1}), voxel_size=VOXEL)
    assert not np.array_equal(ph.raw, other.raw)
    assert not np.array_equal(ph.labels, other.labels)


def test_functional_tables_and_affine(ph):
    rois, neurons = ph.rois, ph.neurons
    p = PhantomParams.from_dict(SMALL)
    assert ph.responses.shape == (len(rois), p.n_orientations, p.n_trials) and ph.responses.dtype == np.float32
    assert sorted(rois.roi_id) == list(range(len(rois)))
    assert (rois.neuron_id == 0).sum() == p.extra_rois
    assert (~neurons.imaged).any() and neurons.imaged.any()
    matched = rois[rois.neuron_id > 0]
    assert sorted(matched.neuron_id) == sorted(neurons.id[neurons.imaged])
    # the affine maps soma centres (x, y, z, 1) nm onto their ROIs within the jitter
    soma = neurons.set_index("id").loc[matched.neuron_id]
    xyz1 = np.column_stack([soma.soma_x_nm, soma.soma_y_nm, soma.soma_z_nm, np.ones(len(soma))])
    mapped = (ph.affine @ xyz1.T).T[:, :3]
    err = np.linalg.norm(mapped - matched[["x_um", "y_um", "z_um"]].to_numpy(), axis=1)
    assert err.max() < 5 * p.roi_jitter_um
    assert ph.affine.shape == (4, 4) and np.allclose(ph.affine[3], [0, 0, 0, 1])
    assert 0.9e-3 < abs(np.linalg.det(ph.affine[:3, :3])) ** (1 / 3) < 1.1e-3  # nm -> µm
    # responses are tuned: the mean response peaks near the preferred orientation for most imaged neurons
    stim = ph.stimuli.orientation_deg.to_numpy()
    mean = ph.responses[rois.neuron_id.to_numpy() > 0].mean(axis=2)
    best = stim[mean.argmax(axis=1)]
    delta = np.abs((best - soma.pref_orientation_deg.to_numpy() + 90) % 180 - 90)
    assert np.mean(delta <= 180 / len(stim)) >= 0.7


def test_write_produces_contract_files(ph, tmp_path):
    out, root = tmp_path / "ds", tmp_path / "ds" / "volume.zarr"
    write(ph, out, root, chunk_shape=(8, 64, 64), offset_nm=(400, 80, 0), pyramid_levels=2)
    for name, is_label in (("raw", False), ("gt/labels", True), ("gt/clefts", True), ("gt/mito", True)):
        meta = io.read_meta(root, name)
        assert meta.voxel_size == VOXEL and meta.offset_nm == (400, 80, 0) and meta.is_label == is_label
        assert meta.shape == ph.raw.shape and meta.levels == 2
    assert np.array_equal(io.open_array(root, "gt/labels")[...], ph.labels)
    assert np.array_equal(io.open_array(root, "raw")[...], ph.raw)
    gt = out / "gt"
    neurons = pd.read_parquet(gt / "neurons.parquet")
    assert np.allclose(neurons.soma_z_nm, ph.neurons.soma_z_nm + 400)
    assert np.allclose(neurons.soma_y_nm, ph.neurons.soma_y_nm + 80)
    for name in ("objects", "synapses", "edges", "functional/rois", "functional/stimuli"):
        assert len(pd.read_parquet(gt / f"{name}.parquet")) == len(getattr(ph, name.split("/")[-1]))
    assert np.array_equal(np.load(gt / "functional" / "responses.npy"), ph.responses)
    # the same functional data as NWB (the ground-truth neuron_id stays out of it)
    from connectomix.coregister import load_functional

    tables = load_functional(gt / "functional" / "rois.parquet", gt / "functional" / "responses.npy",
                             gt / "functional" / "stimuli.parquet")
    for a, b in zip(load_functional(gt / "functional" / "functional.nwb"), tables):
        assert a.equals(b) if isinstance(a, pd.DataFrame) else np.array_equal(a, b)
    # the written affine maps the shifted soma centres to the same ROIs
    matrix = np.array(json.loads((gt / "functional" / "affine.json").read_text())["matrix"])
    rois = pd.read_parquet(gt / "functional" / "rois.parquet")
    first = rois[rois.neuron_id > 0].iloc[0]
    soma = neurons.set_index("id").loc[first.neuron_id]
    um = matrix @ [soma.soma_x_nm, soma.soma_y_nm, soma.soma_z_nm, 1]
    assert np.linalg.norm(um[:3] - [first.x_um, first.y_um, first.z_um]) < 5 * PhantomParams().roi_jitter_um
    summary = json.loads((gt / "phantom.json").read_text())
    assert summary["params"]["seed"] == SMALL["seed"] and "provenance" in summary
    assert summary["stats"]["n_synapses"] == len(ph.synapses)
    assert (gt / "montage.png").stat().st_size > 10_000
    assert not list(gt.rglob(".*.tmp")) and not list(gt.rglob(".*parquet.*"))


def test_cli_writes_the_phantom(tmp_path):
    from connectomix.cli import main

    out = tmp_path / "ph"
    spec = json.dumps({**SMALL, "n_neurons": 4, "n_synapses": 4, "n_orphan_synapses": 2})
    rc = main(["phantom", "--out-dir", str(out), "--volume", str(out / "volume.zarr"), "--params", spec,
               "--voxel-size", "40", "8", "8", "--chunk-shape", "8", "64", "64", "--pyramid-levels", "1"])
    assert rc == 0
    assert json.loads((out / "gt" / "phantom.json").read_text())["stats"]["n_neurons"] == 4
    assert main(["phantom", "--out-dir", str(out), "--volume", str(out / "v.zarr"), "--params", '{"bogus": 1}']) == 1


@pytest.mark.parametrize("bad, key", [({"bogus": 1}, "bogus"), ({"ecs_fraction": 0.5}, "ecs_fraction"),
                                      ({"shape": [4, 64, 64]}, "shape"), ({"n_neurons": 0}, "n_neurons"),
                                      ({"inhibitory_fraction": 1.5}, "inhibitory_fraction"),
                                      ({"seed": "x"}, "seed")])
def test_bad_params_name_the_key(bad, key):
    with pytest.raises(ValueError, match=key):
        PhantomParams.from_dict(bad)


def test_schema_documents_every_parameter_with_the_same_default():
    schema = cmx_config.schema()["$defs"]["phantom"]
    assert schema["additionalProperties"] is False
    defaults = PhantomParams().to_dict()
    assert set(schema["properties"]) == set(defaults)
    for key, spec in schema["properties"].items():
        assert spec.get("default") == defaults[key], key
        assert spec.get("description"), key
    filled = cmx_config.validate({"datasets": {"ph": {"voxel_size": [40, 8, 8], "phantom": {"seed": 5}}}})
    assert PhantomParams.from_dict(filled["datasets"]["ph"]["phantom"]) == PhantomParams(seed=5)


DEFECTS = {"misalign_step_nm": 16.0, "misalign_jitter_nm": 8.0, "misalign_rotation_deg": 0.3, "elastic_nm": 12.0,
           "elastic_length_nm": 400.0, "missing_sections": 1, "blank_sections": 1, "low_contrast_sections": 1,
           "folds": 1, "cracks": 1}


def test_misalignment_and_defects_deform_raw_only(ph, tmp_path):
    from connectomix.phantom.defects import FOLD, LOW_CONTRAST, MISSING

    bad = generate(PhantomParams.from_dict({**SMALL, **DEFECTS}), voxel_size=VOXEL)
    # the tissue and its ground truth do not change; only raw is deformed
    assert np.array_equal(bad.labels, ph.labels) and np.array_equal(bad.clefts, ph.clefts)
    assert ph.misalignment is None and bad.misalignment is not None
    sections, points, mask = (bad.misalignment[k] for k in ("sections", "points", "defects"))
    status = sections.set_index("z").status
    assert sorted(status[status != "ok"]) == ["blank", "crack", "fold", "low_contrast", "missing"]
    assert status[0] == status[len(status) - 1] == "ok"  # defects on interior sections only
    z = {s: int(status.index[status == s][0]) for s in status.unique()}
    assert not bad.raw[z["missing"]].any() and (mask[z["missing"]] == MISSING).all()
    assert (mask[z["blank"]] == MISSING).all() and (mask[z["low_contrast"]] == LOW_CONTRAST).all()
    assert bad.raw[z["low_contrast"]].std() < 0.5 * bad.raw[z["ok"]].std()
    assert (mask[z["fold"]] == FOLD).any() and (mask[z["crack"]] == FOLD).any()
    # the true maps: zero-mean translations; a point shows the aligned position the table says
    assert abs(sections.translation_y_nm.mean()) < 1e-6 and sections.translation_y_nm.abs().max() > 8
    ok = points[points.z == z["ok"]]
    assert ok.valid.all() and not points[points.z == z["missing"]].valid.any()
    shift = np.hypot(ok.aligned_y_nm - ok.raw_y_nm, ok.aligned_x_nm - ok.raw_x_nm)
    assert 0 < shift.median() < 200
    # an observed section matches the aligned image sampled at the true positions
    clean = ph.raw[z["ok"]].astype(float)
    from scipy import ndimage
    sample = ndimage.map_coordinates(clean, [ok.aligned_y_nm / VOXEL[1], ok.aligned_x_nm / VOXEL[2]], order=1)
    seen = bad.raw[z["ok"]][(ok.raw_y_nm / VOXEL[1]).astype(int), (ok.raw_x_nm / VOXEL[2]).astype(int)]
    unmoved = clean[(ok.raw_y_nm / VOXEL[1]).astype(int), (ok.raw_x_nm / VOXEL[2]).astype(int)]
    assert np.corrcoef(sample, seen)[0, 1] > np.corrcoef(unmoved, seen)[0, 1] + 0.2
    write(bad, tmp_path, tmp_path / "volume.zarr", chunk_shape=(8, 64, 64))
    assert np.array_equal(io.open_array(tmp_path / "volume.zarr", "gt/defects")[:], mask)
    assert len(pd.read_parquet(tmp_path / "gt" / "align" / "points.parquet")) == len(points)
