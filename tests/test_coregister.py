"""Co-registration: functional input validation, transform fits, the ILP assignment, CLI and evaluation."""

import json

import numpy as np
import pandas as pd
import pytest

from connectomix import cli
from connectomix import coregister as cr
from connectomix.synthetic.analysis import make_dataset, rotation


# --- assignment ----------------------------------------------------------------------------------------------------


def test_ilp_matches_within_gate_and_leaves_far_roi_unmatched():
    d = np.array([[1.0, 9.0], [9.0, 1.5], [7.0, 8.0]])  # ROI 2 is beyond the gate of 4 from every soma
    out = cr.assign_ilp(d, gate=4.0)
    assert out["soma"].tolist() == [0, 1, -1]
    assert out.loc[:1, "distance"].tolist() == [1.0, 1.5]
    assert np.isnan(out.loc[2, "distance"]) and out.loc[2, "confidence"] == 0
    assert (out.loc[:1, "confidence"] > 0.5).all()


def test_ilp_two_equidistant_rois_share_one_soma_at_most_once():
    d = np.array([[1.0], [1.0]])
    out = cr.assign_ilp(d, gate=4.0)
    assert sorted(out["soma"].tolist()) == [-1, 0]  # one matched, the other left unmatched
    matched = out[out["soma"] == 0]
    assert matched["confidence"].iloc[0] <= 0.5  # the ambiguity shows in the confidence


def test_ilp_finds_the_global_optimum_not_the_greedy_one():
    # Greedy (closest first) gives ROI0->soma0 (1.0) and leaves ROI1 unmatched (cost 4): total 5.
    # The optimum swaps: ROI0->soma1 (1.2) + ROI1->soma0 (1.1) = 2.3.
    d = np.array([[1.0, 1.2], [1.1, 50.0]])
    out = cr.assign_ilp(d, gate=4.0)
    assert out["soma"].tolist() == [1, 0]


def test_ilp_unmatched_cost_below_distance_leaves_roi_unmatched():
    d = np.array([[3.0]])
    assert cr.assign_ilp(d, gate=4.0, unmatched_cost=2.0)["soma"].tolist() == [-1]
    assert cr.assign_ilp(d, gate=4.0, unmatched_cost=3.5)["soma"].tolist() == [0]


# --- transforms ----------------------------------------------------------------------------------------------------


def _true_affine():
    m = np.eye(4)
    m[:3, :3] = rotation(-50, 12) @ np.diag([1.01e-3, 0.97e-3, 1.0e-3])
    m[:3, 3] = [30.0, 400.0, -25.0]
    return m


def test_fit_affine_recovers_exact_landmarks():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 1e5, (6, 3))
    m = _true_affine()
    fit = cr.fit_from_landmarks(src, cr.apply_affine(m, src))
    np.testing.assert_allclose(fit, m, rtol=1e-6, atol=1e-6)


def test_gate_sigma_is_an_upper_confidence_bound_of_its_estimate():
    """The gate uses sigma at the upper 95 % bound of its estimate from the fit's pairs: over many draws of 24
    residuals the bound covers the true sigma ~95 % of the time (the estimate alone: half of the time)."""
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(2000):
        d = np.linalg.norm(rng.normal(0, 1.0, (24, 3)), axis=1)
        covered.append(cr.sigma_upper_bound(cr.robust_sigma(d), 24) >= 1.0)
    assert 0.93 <= np.mean(covered) <= 0.97, np.mean(covered)
    assert cr.sigma_upper_bound(1.0, 24) > cr.sigma_upper_bound(1.0, 200) > 1.0


def test_transform_recovered_from_noisy_partial_overlap_with_outliers():
    """Unknown correspondences: 30 % of somata not imaged, 25 ROIs outside the EM block, 0.5 µm noise."""
    rng = np.random.default_rng(4)
    em = []
    while len(em) < 120:
        p = rng.uniform(0, 1, 3) * [110e3, 110e3, 60e3]
        if all(np.linalg.norm(p - q) > 9e3 for q in em):
            em.append(p)
    em = np.array(em)
    m = _true_affine()
    img = cr.apply_affine(m, em)
    imaged = rng.random(len(em)) < 0.7
    rois = img[imaged] + rng.normal(0, 0.5, (imaged.sum(), 3))
    outliers = []
    while len(outliers) < 25:  # cells imaged beyond the EM block: no partner
        c = rng.uniform(img.min(0) - 50, img.max(0) + 50)
        if np.linalg.norm(img - c, axis=1).min() > 12:
            outliers.append(c)
    q = np.vstack([rois, outliers])
    truth = np.concatenate([np.flatnonzero(imaged), -np.ones(len(outliers), int)])

    params = cr.merged_params({})
    fit = cr.estimate_transform(em, q, params)
    err = np.linalg.norm(cr.apply_affine(fit.matrix, em) - img, axis=1)
    assert err.max() < 0.5, err.max()  # µm, over the whole EM block
    assert 0.3 < fit.sigma_um < 0.8  # the residual scale is the ROI noise

    table = pd.DataFrame({"roi_id": np.arange(len(q)), "x_um": q[:, 0], "y_um": q[:, 1], "z_um": q[:, 2]})
    somata = pd.DataFrame({"id": np.arange(len(em)) + 1, "soma_x_nm": em[:, 0], "soma_y_nm": em[:, 1],
                           "soma_z_nm": em[:, 2]})
    matches, _, _ = cr.coregister(table, somata, params)
    pred = matches["neuron_id"].to_numpy(np.int64) - 1
    assert (pred[truth >= 0] == truth[truth >= 0]).mean() >= 0.99
    assert (matches["neuron_id"].to_numpy()[truth < 0] == 0).all()


def test_landmarks_take_precedence_and_mirror_images_are_found():
    rng = np.random.default_rng(2)
    em = rng.uniform(0, 1, (60, 3)) * [80e3, 80e3, 40e3]
    m = _true_affine()
    m[:3, 2] *= -1  # a flipped z axis (det < 0)
    img = cr.apply_affine(m, em)
    params = cr.merged_params({})
    landmarks = [{"em_nm": em[i].tolist(), "imaging_um": img[i].tolist()} for i in range(5)]
    fit = cr.estimate_transform(em, img, params, landmarks)
    assert fit.method == "landmarks+icp"
    np.testing.assert_allclose(cr.apply_affine(fit.matrix, em), img, atol=1e-6)
    blind = cr.estimate_transform(em, img + rng.normal(0, 0.3, img.shape), params)
    assert np.linalg.det(blind.matrix[:3, :3]) < 0
    assert np.abs(cr.apply_affine(blind.matrix, em) - img).max() < 0.5


# --- input validation ----------------------------------------------------------------------------------------------


def _write_functional(tmp_path, rois=None, responses=None, stimuli=None):
    rois = rois if rois is not None else pd.DataFrame(
        {"roi_id": [1, 2, 3], "x_um": [0.0, 1, 2], "y_um": [0.0, 1, 2], "z_um": [0.0, 1, 2]})
    stimuli = stimuli if stimuli is not None else pd.DataFrame({"stimulus_id": [0, 1], "orientation_deg": [0, 90]})
    responses = responses if responses is not None else np.ones((3, 2, 4))
    paths = tmp_path / "rois.parquet", tmp_path / "responses.npy", tmp_path / "stimuli.csv"
    rois.to_parquet(paths[0])
    np.save(paths[1], responses)
    stimuli.to_csv(paths[2], index=False)
    return paths


@pytest.mark.parametrize("case, message", [
    ("missing_column", r"rois.parquet: ROI table lacks column\(s\) \['z_um'\]"),
    ("duplicated_ids", r"rois.parquet: duplicated roi_id values \[2\]"),
    ("nan_responses", r"responses.npy: responses contain NaN"),
    ("stimulus_count", r"responses.npy: 2 stimuli in responses but 3 rows in .*stimuli.csv"),
    ("roi_count", r"responses.npy: 2 response rows but 3 ROIs"),
    ("axes", r"responses.npy: responses must have 3 axes"),
])
def test_bad_functional_input_names_file_and_problem(tmp_path, case, message):
    kwargs = {}
    if case == "missing_column":
        kwargs["rois"] = pd.DataFrame({"roi_id": [1], "x_um": [0.0], "y_um": [0.0]})
    elif case == "duplicated_ids":
        kwargs["rois"] = pd.DataFrame({"roi_id": [1, 2, 2], "x_um": [0.0] * 3, "y_um": [0.0] * 3, "z_um": [0.0] * 3})
    elif case == "nan_responses":
        r = np.ones((3, 2, 4))
        r[1, 1, 1] = np.nan
        kwargs["responses"] = r
    elif case == "stimulus_count":
        kwargs["stimuli"] = pd.DataFrame({"stimulus_id": [0, 1, 2], "orientation_deg": [0, 60, 120]})
    elif case == "roi_count":
        kwargs["responses"] = np.ones((2, 2, 4))
    elif case == "axes":
        kwargs["responses"] = np.ones((3, 2))
    paths = _write_functional(tmp_path, **kwargs)
    with pytest.raises(ValueError, match=message):
        cr.load_functional(*paths)


def _nwb_by_hand(path, masks, responses, trials, grid=(0.5, 0.5, 2.0), origin=(10.0, 20.0, 30.0)):
    """A minimal NWB file as another tool would write it: ROIs as weighted voxel masks only (no centre columns)."""
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import DfOverF, ImageSegmentation, OpticalChannel

    nwb = NWBFile(session_description="s", identifier="i", session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc))
    device = nwb.create_device(name="scope")
    plane = nwb.create_imaging_plane(name="p", optical_channel=OpticalChannel(name="c", description="c",
                                                                              emission_lambda=500.0),
                                     description="p", device=device, excitation_lambda=900.0, indicator="g",
                                     location="v1", grid_spacing=list(grid), origin_coords=list(origin))
    module = nwb.create_processing_module(name="ophys", description="o")
    segmentation = ImageSegmentation()
    module.add(segmentation)
    table = segmentation.create_plane_segmentation(name="ps", description="ps", imaging_plane=plane)
    for mask in masks:
        table.add_roi(voxel_mask=mask)
    dff = DfOverF()
    module.add(dff)
    dff.create_roi_response_series(name="dff", data=responses, unit="1", rate=1.0,
                                   rois=table.create_roi_table_region(region=list(range(len(masks))),
                                                                      description="all"))
    nwb.add_trial_column(name="stimulus_id", description="s")
    nwb.add_trial_column(name="orientation_deg", description="o")
    for k, (sid, ori) in enumerate(trials):
        nwb.add_trial(start_time=float(k), stop_time=k + 0.5, stimulus_id=sid, orientation_deg=ori)
    with NWBHDF5IO(str(path), "w") as f:
        f.write(nwb)


def test_nwb_round_trip_and_voxel_mask_centres(tmp_path):
    """write_nwb -> load_functional gives back the three tables exactly; a file with voxel masks only gets its ROI
    centres from the weighted masks through the imaging plane's grid, and its trials in presentation order."""
    rois = pd.DataFrame({"roi_id": [4, 9, 2], "x_um": [1.25, -3.5, 7.0], "y_um": [0.5, 2.0, -1.0],
                         "z_um": [10.0, 12.5, 11.0]})
    stimuli = pd.DataFrame({"stimulus_id": [3, 1], "orientation_deg": [90.0, np.nan]})
    responses = np.random.default_rng(0).normal(size=(3, 2, 4))
    cr.write_nwb(tmp_path / "f.nwb", rois, responses, stimuli)
    assert not list(tmp_path.glob("*.tmp*"))
    r, a, st = cr.load_functional(tmp_path / "f.nwb", tmp_path / "f.nwb", None)
    pd.testing.assert_frame_equal(r, rois)
    pd.testing.assert_frame_equal(st, stimuli)
    np.testing.assert_allclose(a, responses, rtol=1e-6)  # stored as float32
    # by hand: ROI 0 two voxels (weights 1 and 3), ROI 1 one voxel; stimuli 5 and 6, presented 5 6 6 5
    masks = [[(0, 0, 0, 1.0), (4, 0, 0, 3.0)], [(2, 2, 1, 1.0)]]
    data = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    _nwb_by_hand(tmp_path / "h.nwb", masks, data, [(5, 0.0), (6, 45.0), (6, 45.0), (5, 0.0)])
    r, a, st = cr.load_functional(tmp_path / "h.nwb")
    assert r["roi_id"].tolist() == [0, 1]
    np.testing.assert_allclose(r[["x_um", "y_um", "z_um"]].to_numpy(), [[10.0 + 3 * 0.5, 20.0, 30.0],
                                                                        [10.0 + 1.0, 20.0 + 1.0, 30.0 + 2.0]])
    assert st["stimulus_id"].tolist() == [5, 6] and st["orientation_deg"].tolist() == [0.0, 45.0]
    np.testing.assert_array_equal(a[0], [[1.0, 4.0], [2.0, 3.0]])  # ROI 0: stimulus 5 (trials 1, 4), 6 (2, 3)
    np.testing.assert_array_equal(a[1], [[10.0, 40.0], [20.0, 30.0]])
    # bad input names the file and the problem
    _nwb_by_hand(tmp_path / "u.nwb", masks, data[:3], [(5, 0.0), (6, 45.0), (6, 45.0)])
    with pytest.raises(ValueError, match=r"u\.nwb: stimuli were presented unequal numbers of times"):
        cr.load_functional(tmp_path / "u.nwb")
    bad = data.copy()
    bad[2, 1] = np.nan
    _nwb_by_hand(tmp_path / "n.nwb", masks, bad, [(5, 0.0), (6, 45.0), (6, 45.0), (5, 0.0)])
    with pytest.raises(ValueError, match=r"n\.nwb: responses contain NaN"):
        cr.load_functional(tmp_path / "n.nwb")
    with pytest.raises(ValueError, match="NWB file holding responses and stimuli too"):
        cr.load_functional(tmp_path / "h.nwb", tmp_path / "responses.npy", None)
    with pytest.raises(ValueError, match="needs its responses"):
        cr.load_functional(tmp_path / "rois.parquet")


def test_roi_aliases_and_ground_truth_column_ignored(tmp_path):
    table = pd.DataFrame({"roi_id": [5, 6], "x": [1.0, 2], "y": [0.0, 1], "z": [3.0, 4], "neuron_id": [9, 0]})
    table.to_csv(tmp_path / "rois.csv", index=False)
    loaded = cr.load_rois(tmp_path / "rois.csv")
    assert list(loaded.columns) == ["roi_id", "x_um", "y_um", "z_um"]


# --- CLI and evaluation --------------------------------------------------------------------------------------------


def test_cli_and_evaluation_on_synthetic_phantom(tmp_path, capsys):
    make_dataset(tmp_path, n_neurons=50, seed=3, n_extra_rois=8)
    f = tmp_path / "gt" / "functional"
    args = ["--rois", str(f / "rois.parquet"), "--responses", str(f / "responses.npy"),
            "--stimuli", str(f / "stimuli.parquet"), "--neurons", str(tmp_path / "neurons.parquet")]
    assert cli.main(["coregister", *args, "--out", str(tmp_path / "matches.parquet"),
                     "--transform", str(tmp_path / "coregister.json")]) == 0
    matches = pd.read_parquet(tmp_path / "matches.parquet")
    assert list(matches.columns) == ["roi_id", "neuron_id", "distance", "confidence"]
    assert matches["confidence"].between(0, 1).all()
    assert cli.main(["evaluate", "coregister", "--matches", str(tmp_path / "matches.parquet"),
                     "--transform", str(tmp_path / "coregister.json"), "--rois-gt", str(f / "rois.parquet"),
                     "--affine-gt", str(f / "affine.json"), "--neurons", str(tmp_path / "neurons.parquet"),
                     "--gt-neurons", str(tmp_path / "gt" / "neurons.parquet"),
                     "--out", str(tmp_path / "eval" / "coregister.json")]) == 0
    metrics = json.loads((tmp_path / "eval" / "coregister.json").read_text())
    assert metrics["stage"] == "coregister"
    assert metrics["metrics"]["accuracy"] >= 0.99
    assert metrics["metrics"]["false_match_rate"] == 0
    assert metrics["metrics"]["affine_error_um_max"] < 0.5
    # Bad input through the CLI: one clear line, exit 1.
    (tmp_path / "bad.csv").write_text("roi_id,x_um,y_um\n1,0,0\n")
    bad = ["--rois", str(tmp_path / "bad.csv"), *args[2:]]
    assert cli.main(["coregister", *bad, "--out", str(tmp_path / "m.parquet"),
                     "--transform", str(tmp_path / "t.json")]) == 1
    assert "bad.csv: ROI table lacks column(s) ['z_um']" in capsys.readouterr().err


def test_only_neurons_with_a_soma_are_candidates(tmp_path):
    table = pd.DataFrame({"id": np.array([1, 2, 3], np.uint64), "is_neuron": [True, False, True],
                          "soma_x_nm": [0.0, 1.0, np.nan], "soma_y_nm": 0.0, "soma_z_nm": 0.0})
    table.to_parquet(tmp_path / "neurons.parquet")
    assert cr.load_somata(tmp_path / "neurons.parquet")["id"].tolist() == [1]


def test_cli_without_em_somata_leaves_every_roi_unmatched(tmp_path):
    """A reconstruction with no recognised neuron still completes: all ROIs unmatched, no transform."""
    from connectomix.cli import main

    rois, responses, stimuli = _write_functional(tmp_path)
    neurons = tmp_path / "neurons.parquet"
    pd.DataFrame({"id": np.array([5, 6], np.uint64), "is_neuron": [False, False], "soma_x_nm": [np.nan] * 2,
                  "soma_y_nm": [np.nan] * 2, "soma_z_nm": [np.nan] * 2}).to_parquet(neurons)
    out, transform = tmp_path / "matches.parquet", tmp_path / "coregister.json"
    assert main(["coregister", "--rois", str(rois), "--responses", str(responses), "--stimuli", str(stimuli),
                 "--neurons", str(neurons), "--out", str(out), "--transform", str(transform)]) == 0
    matches = pd.read_parquet(out)
    assert list(matches["roi_id"]) == [1, 2, 3] and (matches["neuron_id"] == 0).all()
    assert "too few somata" in transform.read_text()
