"""Analysis: tuning metrics, like-to-like statistics (bootstrap, shuffle null, distance control), cell types, the
CLI and evaluation on a synthetic phantom, and Snakemake report generation on a tiny workflow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from connectomix import cli
from connectomix.analysis import celltypes, like_to_like, tuning
from connectomix.synthetic.analysis import make_dataset, von_mises

REPO = Path(__file__).resolve().parents[1]
THETA = np.arange(0, 180, 22.5)


# --- tuning --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pref", [0.0, 37.0, 100.0, 170.0])
def test_von_mises_neuron_gives_its_preferred_orientation_and_high_osi(pref):
    curve = von_mises(THETA, pref, kappa=3.0)[None]
    got, osi = tuning.preferred_orientation_osi(curve, THETA)
    assert abs(tuning.orientation_difference(got[0], pref)) < 1.0
    assert osi[0] > 0.6


def test_flat_neuron_has_osi_zero_and_sharper_tuning_means_higher_osi():
    _, osi_flat = tuning.preferred_orientation_osi(np.full((1, len(THETA)), 0.7), THETA)
    assert osi_flat[0] < 1e-12
    _, broad = tuning.preferred_orientation_osi(von_mises(THETA, 45, 0.5)[None], THETA)
    _, sharp = tuning.preferred_orientation_osi(von_mises(THETA, 45, 5.0)[None], THETA)
    assert 0 < broad[0] < sharp[0] <= 1


def test_directions_fold_into_orientations_and_blanks_are_ignored():
    directions = np.concatenate([np.arange(0, 360, 22.5), [np.nan]])
    mean = np.concatenate([von_mises(directions[:-1], 60, 2.0), [5.0]])  # a huge blank response is left out
    resp = np.repeat(mean[None, :, None], 3, axis=2)
    curves, ori = tuning.orientation_curves(resp, directions)
    np.testing.assert_allclose(ori, np.arange(0, 180, 22.5))
    pref, _ = tuning.preferred_orientation_osi(curves, ori)
    assert tuning.orientation_difference(pref[0], 60) < 1.0


def test_reliability_high_for_repeatable_responses_and_near_zero_for_noise():
    rng = np.random.default_rng(0)
    signal = von_mises(THETA, 30, 2.0)[None, :, None]
    reliable = signal + rng.normal(0, 0.05, (1, len(THETA), 20))
    noise = rng.normal(0, 1, (50, len(THETA), 20))
    assert tuning.split_half_reliability(reliable)[0] > 0.95
    assert abs(np.nanmean(tuning.split_half_reliability(noise))) < 0.15


def test_signal_correlation_and_orientation_difference():
    a, b = von_mises(THETA, 20, 2.0), von_mises(THETA, 110, 2.0)
    sc = tuning.signal_correlation(np.stack([a, a * 2 + 1, b])[:, :, None])
    assert sc[0, 1] == pytest.approx(1.0) and sc[0, 2] < -0.5
    assert tuning.orientation_difference(170, 10) == pytest.approx(20)
    assert tuning.orientation_difference(0, 90) == pytest.approx(90)


# --- like-to-like statistics ---------------------------------------------------------------------------------------


def _synthetic_pairs(n, beta, seed, p0=0.15):
    """Symmetric signal correlations per neuron pair from latent tuning; connections with P = p0 + beta * x."""
    rng = np.random.default_rng(seed)
    pref = rng.uniform(0, np.pi, n)
    x = np.cos(2 * (pref[:, None] - pref[None]))  # in [-1, 1]
    y = (rng.random((n, n)) < np.clip(p0 + beta * x, 0, 1)).astype(float)
    np.fill_diagonal(y, 0)
    return x, y


def test_bootstrap_ci_covers_the_true_slope():
    beta = 0.1
    covered = 0
    for seed in range(5):
        x, y = _synthetic_pairs(60, beta, seed)
        res = like_to_like.analyse(x, y, np.zeros_like(x, dtype=int), np.arange(60), [-1, 0, 1], n_boot=300,
                                   n_shuffle=50, seed=seed)
        assert res["ci_low"] < res["slope"] < res["ci_high"]
        covered += res["ci_low"] <= beta <= res["ci_high"]
    assert covered >= 4  # nominal 95 % coverage: 5/5 expected, allow one miss


def test_relative_slope_survives_connections_missed_at_random():
    """An incomplete connectome (half the connections lost, blind to function) halves the slope; the slope over the
    mean connection probability stays, and the complete one's CI covers it."""
    x, y = _synthetic_pairs(60, 0.1, seed=4)
    rng = np.random.default_rng(0)
    half = y * (rng.random(y.shape) < 0.5)
    full, part = (like_to_like.analyse(x, m, np.zeros_like(x, dtype=int), np.arange(60), [-1, 0, 1], n_boot=300,
                                       n_shuffle=20, seed=1) for m in (y, half))
    assert 0.35 < part["slope"] / full["slope"] < 0.65
    assert part["slope"] < full["ci_low"]
    assert full["relative_ci_low"] <= part["relative_slope"] <= full["relative_ci_high"]
    assert full["relative_ci_low"] < full["relative_slope"] < full["relative_ci_high"]
    off = ~np.eye(60, dtype=bool)
    assert full["relative_slope"] == pytest.approx(full["slope"] / y[off].mean())
    # no connection at all: no relative slope, no crash
    none = like_to_like.analyse(x, np.zeros_like(y), np.zeros_like(x, dtype=int), np.arange(60), [-1, 1], n_boot=20,
                                n_shuffle=5)
    assert np.isnan(none["relative_slope"]) and np.isnan(none["relative_ci_low"])


def test_shuffle_null_is_flat_and_a_real_effect_stands_out():
    x, y = _synthetic_pairs(60, 0.1, seed=11)
    res = like_to_like.analyse(x, y, np.zeros_like(x, dtype=int), np.arange(60), [-1, -0.5, 0, 0.5, 1], n_boot=100,
                               n_shuffle=400, seed=1)
    assert res["null_flat"]
    assert abs(res["null_mean"]) < 0.25 * res["slope"]
    assert res["slope"] > res["null_ci_high"] and res["p_value"] < 0.01
    assert res["n_pairs"] == 60 * 59 and res["n_connected"] == int(y.sum()) > 0
    band = res["binned"]
    # The null curve is flat: every bin's null mean is within 0.03 of the overall connection rate.
    assert np.abs(band["null_mean"] - y[~np.eye(60, dtype=bool)].mean()).max() < 0.03
    # No effect: slope inside the null's 95 % range.
    x0, y0 = _synthetic_pairs(60, 0.0, seed=12)
    res0 = like_to_like.analyse(x0, y0, np.zeros_like(x0, dtype=int), np.arange(60), [-1, 1], n_boot=100,
                                n_shuffle=400, seed=2)
    assert res0["null_ci_low"] <= res0["slope"] <= res0["null_ci_high"]
    assert res0["ci_low"] <= 0 <= res0["ci_high"]


def test_distance_control_removes_a_confound():
    """Connections depend only on distance, and similar tuning goes with short distance: the raw slope is positive,
    the distance-controlled one is not."""
    rng = np.random.default_rng(5)
    n = 100
    pos = rng.uniform(0, 100, (n, 2))
    ori = pos[:, 0] / 100 * 90  # tuning drifts with position: a confound
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    x = np.cos(np.deg2rad(2 * (ori[:, None] - ori[None])))
    y = (rng.random((n, n)) < 0.6 * np.exp(-dist / 15)).astype(float)
    np.fill_diagonal(y, 0)
    off = ~np.eye(n, dtype=bool)
    raw = like_to_like.controlled_slope(x[off], y[off], np.zeros(off.sum(), int))
    bins, _ = like_to_like.distance_bins(dist, off, 8)
    res = like_to_like.analyse(x, y, bins, np.arange(n), [-1, 1], n_boot=200, n_shuffle=0, seed=0)
    assert raw > 0.05
    assert res["ci_low"] <= 0 <= res["ci_high"] and abs(res["slope"]) < raw / 3


def test_celltype_and_distance_connectivity_tables():
    types = pd.DataFrame({"id": np.arange(1, 5, dtype=np.uint64), "cell_type": ["excitatory"] * 3 + ["inhibitory"]})
    edges = pd.DataFrame({"pre": [1, 1, 4, 4, 4], "post": [2, 4, 1, 2, 3], "n_synapses": [2, 1, 3, 1, 1]})
    table = like_to_like.celltype_connectivity(types, edges).set_index(["pre_type", "post_type"])
    assert table.loc[("excitatory", "excitatory"), "n_pairs"] == 6
    assert table.loc[("excitatory", "excitatory"), "p_connection"] == pytest.approx(1 / 6)
    assert table.loc[("inhibitory", "excitatory"), "p_connection"] == pytest.approx(1.0)
    assert table.loc[("excitatory", "inhibitory"), "synapses_per_connection"] == pytest.approx(1.0)
    neurons = pd.DataFrame({"id": np.arange(1, 5, dtype=np.uint64), "soma_x_nm": [0, 5e3, 25e3, 26e3],
                            "soma_y_nm": 0.0, "soma_z_nm": 0.0})
    dist = like_to_like.connectivity_vs_distance(neurons, edges, bin_um=10)
    assert dist["n_pairs"].sum() == 12 and dist["n_connected"].sum() == 5
    full = dist[dist["n_pairs"] > 0]
    assert (full["ci_low"] <= full["p_connection"]).all() and (full["p_connection"] <= full["ci_high"]).all()


# --- cell types ----------------------------------------------------------------------------------------------------


def test_celltypes_unsupervised_accuracy_and_naming_rule():
    rng = np.random.default_rng(3)
    n = 120
    exc = rng.random(n) < 0.8
    neurons = pd.DataFrame({
        "id": np.arange(n, dtype=np.uint64) + 1, "soma_x_nm": rng.uniform(0, 1e5, n), "soma_y_nm": 0.0,
        "soma_z_nm": 0.0, "soma_radius_nm": np.where(exc, rng.normal(7500, 500, n), rng.normal(5000, 500, n)),
        "cable_length_um": np.where(exc, rng.normal(900, 150, n), rng.normal(600, 150, n)),
    })
    out = celltypes.classify(neurons, params={"seed": 0})
    truth = np.where(exc, "excitatory", "inhibitory")
    assert (out["cell_type"].to_numpy() == truth).mean() >= 0.95
    assert out["p_excitatory"].between(0, 1).all()
    # Position columns are never features.
    assert "soma_x_nm" not in celltypes.neuron_features(neurons).columns


def _somata(radius, **columns):
    n = len(radius)
    return pd.DataFrame({"id": np.arange(n, dtype=np.uint64) + 1, "soma_radius_nm": radius, "soma_x_nm": 0.0,
                         "soma_y_nm": 0.0, "soma_z_nm": 0.0, **columns})


def test_celltypes_from_soma_size_on_few_neurons_with_a_tied_covariance():
    """The phantom's classes by soma size (inhibitory 0.7x, each +-15 %, 2 % measurement noise), 30 neurons a draw:
    the tied mixture finds them; a full covariance often fits one class to a tight handful of cells."""
    accuracy = {"tied": [], "full": []}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        inh = rng.random(30) < 0.3
        radius = np.where(inh, 0.7, 1.0) * 260 * rng.uniform(0.85, 1.15, 30) * rng.normal(1, 0.02, 30)
        truth = np.where(inh, "inhibitory", "excitatory")
        for covariance in accuracy:
            out = celltypes.classify(_somata(radius), params={"features": ["soma_radius_nm"],
                                                              "covariance": covariance})
            accuracy[covariance].append((out["cell_type"].to_numpy() == truth).mean())
    tied, full = np.array(accuracy["tied"]), np.array(accuracy["full"])
    assert (tied >= 0.95).mean() >= 0.9 and tied.min() >= 0.85, tied
    assert (full >= 0.95).mean() < 0.8 and full.mean() < tied.mean() - 0.05, (full, tied)
    with pytest.raises(ValueError, match="covariance"):
        celltypes.classify(_somata(radius), params={"features": ["soma_radius_nm"], "covariance": "diagonal"})


def test_celltypes_equal_priors_keep_the_boundary_out_of_the_smaller_class():
    """The demo phantom's uncut soma radii (nm, measured): with fitted class fractions the tied boundary falls at
    ~212 nm and calls the three largest inhibitory cells excitatory; equal priors put it between the classes."""
    inhibitory = [164.1, 173.3, 184.0, 185.3, 190.2, 205.2, 216.4, 217.3]
    excitatory = [232.4, 234.7, 239.1, 242.9, 243.0, 246.1, 248.0, 250.3, 251.0, 253.0, 266.2, 270.4, 271.7,
                  279.2, 280.8, 291.7, 294.5, 297.7]
    truth = np.array(["inhibitory"] * len(inhibitory) + ["excitatory"] * len(excitatory))
    somata = _somata(np.array(inhibitory + excitatory))
    calls = {priors: celltypes.classify(somata, params={"features": ["soma_radius_nm"], "priors": priors})
             for priors in ("fitted", "equal")}
    wrong = truth != calls["fitted"]["cell_type"].to_numpy()
    assert list(np.flatnonzero(wrong)) == [6, 7], calls["fitted"]
    assert (calls["equal"]["cell_type"].to_numpy() == truth).all()
    # p_excitatory is the posterior under the priors used
    assert calls["fitted"]["p_excitatory"][6] > 0.5 > calls["equal"]["p_excitatory"][6]
    with pytest.raises(ValueError, match="priors"):
        celltypes.classify(somata, params={"features": ["soma_radius_nm"], "priors": "uniform"})


def test_celltypes_somata_cut_by_the_volume_edge_do_not_shape_the_classes():
    """Somata cut by the volume's edge look small (their size is a lower bound); fitted with the rest they form a
    third group that pulls a class boundary into the real ones."""
    rng = np.random.default_rng(5)
    radius = np.r_[rng.uniform(230, 300, 16), rng.uniform(160, 215, 8), rng.uniform(100, 150, 6)]
    truth = np.r_[["excitatory"] * 16, ["inhibitory"] * 8]
    cut = np.r_[np.zeros(24, bool), np.ones(6, bool)]
    with_flag = celltypes.classify(_somata(radius, soma_truncated=cut), params={"features": ["soma_radius_nm"]})
    assert (with_flag["cell_type"].to_numpy()[:24] == truth).all()
    assert len(with_flag) == 30 and with_flag["p_excitatory"].between(0, 1).all()  # cut ones are classified too
    without = celltypes.classify(_somata(radius), params={"features": ["soma_radius_nm"]})
    assert (without["cell_type"].to_numpy()[:24] == truth).mean() < 0.9
    # most somata cut (as on the phantoms, where false somata at the edge are many): the uncut still decide
    many_cut = np.r_[radius[:24:2], rng.uniform(100, 170, 18)]
    cut = np.r_[np.zeros(12, bool), np.ones(18, bool)]
    out = celltypes.classify(_somata(many_cut, soma_truncated=cut), params={"features": ["soma_radius_nm"]})
    assert (out["cell_type"].to_numpy()[:12] == truth[::2]).all()


# --- CLI, evaluation and report ------------------------------------------------------------------------------------

FAST = {"like_to_like": {"bootstrap": 200, "shuffles": 200}}


def _run_pipeline(root: Path):
    f = root / "gt" / "functional"
    functional = ["--rois", str(f / "rois.parquet"), "--responses", str(f / "responses.npy"),
                  "--stimuli", str(f / "stimuli.parquet")]
    assert cli.main(["coregister", *functional, "--neurons", str(root / "neurons.parquet"),
                     "--out", str(root / "matches.parquet"), "--transform", str(root / "coregister.json")]) == 0
    assert cli.main(["analysis", *functional, "--neurons", str(root / "neurons.parquet"),
                     "--edges", str(root / "edges.parquet"), "--matches", str(root / "matches.parquet"),
                     "--transform", str(root / "coregister.json"), "--params", json.dumps(FAST),
                     "--out-dir", str(root / "analysis")]) == 0
    assert cli.main(["evaluate", "analysis", "--cell-types", str(root / "analysis" / "cell_types.parquet"),
                     "--like-to-like", str(root / "analysis" / "like_to_like.json"),
                     "--neurons", str(root / "neurons.parquet"), "--gt-neurons", str(root / "gt" / "neurons.parquet"),
                     "--gt-edges", str(root / "gt" / "edges.parquet"), "--rois-gt", str(f / "rois.parquet"),
                     "--responses", str(f / "responses.npy"), "--stimuli", str(f / "stimuli.parquet"),
                     "--params", json.dumps(FAST), "--celltypes-out", str(root / "eval" / "celltypes.json"),
                     "--like-to-like-out", str(root / "eval" / "like_to_like.json")]) == 0


def test_analysis_cli_tables_figures_and_validation_on_synthetic_phantom(tmp_path):
    make_dataset(tmp_path, n_neurons=70, seed=2)
    _run_pipeline(tmp_path)
    out = tmp_path / "analysis"
    from connectomix.analysis.cli import FIGURES, TABLES

    for name in TABLES:
        assert len(pd.read_parquet(out / f"{name}.parquet")) > 0, name
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert b"<svg" in (out / "figures" / f"{name}.svg").read_bytes()[:1000]
    assert "Versions" in (out / "summary.html").read_text()
    ct = json.loads((tmp_path / "eval" / "celltypes.json").read_text())
    assert ct["stage"] == "celltypes" and ct["metrics"]["accuracy"] >= 0.95
    ltl = json.loads((tmp_path / "eval" / "like_to_like.json").read_text())["metrics"]
    assert ltl["gt_ci_low"] <= ltl["slope"] <= ltl["gt_ci_high"] and ltl["within_gt_ci"] == 1
    assert ltl["gt_ci_low"] > 0  # the phantom's like-to-like effect is detected in the ground truth
    assert ltl["gt_relative_ci_low"] <= ltl["relative_slope"] <= ltl["gt_relative_ci_high"]
    assert ltl["relative_within_gt_ci"] == 1 and ltl["gt_relative_ci_low"] > 0
    assert ltl["null_flat"] == 1 and ltl["gt_null_flat"] == 1
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert ltl["n_connected_pairs"] == int(pairs["connected"].sum()) > 0 and ltl["gt_n_connected_pairs"] > 0


def test_like_to_like_metrics_compare_with_the_ground_truth_run():
    from connectomix.evaluate.analysis import like_to_like_metrics

    def result(slope, relative, ci=0.05, connected=10):
        return {"slope": slope, "ci_low": slope - ci, "ci_high": slope + ci, "relative_slope": relative,
                "relative_ci_low": relative - 10 * ci, "relative_ci_high": relative + 10 * ci, "p_value": 0.01,
                "null_mean": 0.0, "null_sd": 0.01, "null_flat": True, "n_neurons": 20, "n_connected": connected}

    gt = {"connection_vs_signal_corr": result(0.09, 1.6, ci=0.03), "connection_vs_ori_diff": result(-0.002, -0.03)}
    # half the connections found: the slope halves (outside the GT CI), the relative slope does not
    recon = {"analyses": {"connection_vs_signal_corr": result(0.045, 1.5),
                          "connection_vs_ori_diff": result(-0.001, -0.03)}}
    m = like_to_like_metrics(recon, gt)
    assert m["within_gt_ci"] == 0 and m["relative_within_gt_ci"] == 1
    assert m["gt_relative_ci_low"] == pytest.approx(1.3) and m["relative_slope"] == 1.5
    # the same slopes on 3 connected pairs: not evidence (on the phantoms such slopes fell in the CI by chance)
    recon["analyses"]["connection_vs_signal_corr"] = result(0.09, 1.6, connected=3)
    few = like_to_like_metrics(recon, gt, min_pairs=10)
    assert few["within_gt_ci"] == few["relative_within_gt_ci"] == 0 and few["n_connected_pairs"] == 3
    assert like_to_like_metrics(recon, gt, min_pairs=3)["within_gt_ci"] == 1
    # no connection among the matched neurons: no relative slope, not within
    recon["analyses"]["connection_vs_signal_corr"] = {**result(0.0, float("nan")), "relative_ci_low": float("nan")}
    assert like_to_like_metrics(recon, gt)["relative_within_gt_ci"] == 0
    # too few matched neurons for the analysis: NaN throughout, the GT side still reported
    m = like_to_like_metrics({"analyses": {"connection_vs_signal_corr": {"slope": float("nan")}}, "n_units": 2}, gt)
    assert np.isnan(m["relative_slope"]) and m["relative_within_gt_ci"] == 0 and m["gt_relative_slope"] == 1.6


TINY_SNAKEFILE = """
report: "{repo}/report/workflow.rst"

include: "{repo}/rules/common.smk"
include: "{repo}/rules/coregister.smk"
include: "{repo}/rules/analysis.smk"

rule all:
    input:
        [p for n in DATASETS for p in [PATHS.file("analysis/summary.html", n), PATHS.eval("coregister", n),
                                       PATHS.eval("celltypes", n), PATHS.eval("like_to_like", n)]],
"""


def test_snakemake_report_on_a_tiny_workflow(tmp_path):
    """The real coregister/analysis rules on a synthetic phantom, then `snakemake --report`."""
    data = tmp_path / "results" / "phantom"
    make_dataset(data, n_neurons=50, seed=5)
    (data / "gt" / "phantom.json").write_text("{}")
    pd.DataFrame({"id": pd.Series([], dtype=np.uint64)}).to_parquet(data / "morphology.parquet")
    (tmp_path / "Snakefile").write_text(TINY_SNAKEFILE.format(repo=REPO))
    config = {"results_dir": str(tmp_path / "results"),
              "datasets": {"phantom": {"voxel_size": [40, 8, 8], "phantom": {}}},
              "analysis": {"like_to_like": {"bootstrap": 50, "shuffles": 50}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    base = [snakemake, "--configfile", "config.json", "--cores", "1"]
    run = subprocess.run([*base, "all"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    rep = subprocess.run([*base, "--report", "report.html"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert rep.returncode == 0, rep.stderr[-3000:]
    html = (tmp_path / "report.html").read_text(errors="ignore")
    for text in ("like_to_like_signal_corr.png", "coregistration.png", "Like-to-like", "Metrics"):
        assert text in html, text
