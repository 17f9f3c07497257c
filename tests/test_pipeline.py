"""End to end: the whole workflow on a small phantom, through Snakemake, as `make demo` runs it.

One block per stage keeps it within CI's budget; block invariance has its own tests per stage. The results folder
has a name with a space, quotes, `$` and `;`: every path reaches the jobs' shell commands quoted (issue 27).
"""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers import TINY, failure_report, snakemake_cmd, snakemake_env, write_config

RESULTS = "it's a \"test\" $dir;"


def _files(root: Path) -> set:
    """Every file under root, relative to it, but Snakemake's own records (.snakemake/)."""
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and ".snakemake" not in p.parts}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    write_config(work, {**TINY, "results_dir": RESULTS})
    before = _files(work)
    cmd = snakemake_cmd(work, "--cores", "2", "--quiet", "rules")
    env = snakemake_env()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, failure_report(result, work, results=RESULTS)
    return work / RESULTS / "tiny", cmd, env, sorted(_files(work) - before)


def test_every_output_lands_in_a_results_dir_named_with_shell_characters(pipeline_run):
    out, _, _, new = pipeline_run
    outside = [p for p in new if p.parts[0] != RESULTS]
    assert not outside, f"files written outside the results folder: {outside[:20]}"
    assert (out / "eval" / "metrics.json").exists() and (out / "neuroglancer.json").exists()


def test_pipeline_writes_every_stage_output(pipeline_run):
    out, _, _, _ = pipeline_run
    for name in ("gt/phantom.json", "segments.parquet", "morphology.parquet", "synapses.parquet",
                 "neurons.parquet", "edges.parquet", "matches.parquet", "eval/metrics.json",
                 "neuroglancer.json"):
        assert (out / name).exists(), f"missing {name}"
    for array in ("raw", "affinities", "synapse_maps", "segmentation"):
        assert (out / "volume.zarr" / array / "0" / ".zarray").exists(), f"missing array {array}"
    # skeletons (issue 5): one SWC file and one precomputed skeleton per segment of skeletons.parquet
    exported = json.loads((out / "skeletons" / "export.json").read_text())
    n_skeletons = pd.read_parquet(out / "skeletons.parquet")["id"].nunique()
    assert exported["swc_files"] == exported["precomputed_skeletons"] == n_skeletons > 0
    assert len(list((out / "skeletons" / "swc").glob("*.swc"))) == n_skeletons
    assert (out / "precomputed" / "segmentation" / "skeletons" / "info").exists()


def test_pipeline_metrics_are_measured_against_ground_truth(pipeline_run):
    out, _, _, _ = pipeline_run
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    for key in ("segmentation.voi_split", "segmentation.voi_merge", "segmentation.arand",
                "synapses.f1", "connectome.edge_f1", "coregister.accuracy", "skeletons.erl_nm",
                "skeletons.gt_erl_nm", "skeletons.splits", "skeletons.merges"):
        assert key in metrics, f"metrics.json lacks {key}: {sorted(metrics)}"
    assert 0 <= metrics["skeletons.erl_nm"] <= metrics["skeletons.gt_erl_nm"] and metrics["skeletons.gt_erl_nm"] > 0
    # a real segmentation of real predictions beats the trivial one that puts every voxel in one segment
    voi = metrics["segmentation.voi_split"] + metrics["segmentation.voi_merge"]
    assert voi < _entropy_bits(out), (voi, _entropy_bits(out))
    # the fragments' best agglomeration (majority overlap) bounds what the agglomeration reached
    assert 0 < metrics["segmentation.fragment_bound_voi"] <= voi
    segments = pd.read_parquet(out / "segments.parquet")
    assert len(segments) > 10


@pytest.mark.xfail(strict=True, reason="issue 4's VOI <= 0.15 is not met: the U-Net's affinities limit it, "
                                      "mostly between sections (benchmarks/results/segment_errors.md)")
def test_pipeline_segmentation_meets_the_accuracy_target(pipeline_run):
    out, _, _, _ = pipeline_run
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["segmentation.voi_split"] + metrics["segmentation.voi_merge"] <= 0.15


def _entropy_bits(out: Path) -> float:
    """VOI of the all-in-one-segment answer: the entropy of the ground-truth labels (label 0 ignored)."""
    import numpy as np

    from connectomix import io

    gt = io.open_array(out / "volume.zarr", "gt/labels")[...]
    _, counts = np.unique(gt[gt > 0], return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def test_rerun_does_nothing(pipeline_run):
    _, cmd, env, _ = pipeline_run
    result = subprocess.run(cmd[:-2] + ["-n"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def test_pipeline_writes_meshes_annotations_and_a_report(pipeline_run, tmp_path):
    """Meshes (read back with cloud-volume) and annotation layers in the dataset's precomputed folder; the
    Snakemake report renders, its figures (the mesh views included) non-empty images."""
    import zipfile

    cloudvolume = pytest.importorskip("cloudvolume")
    out, cmd, env, _ = pipeline_run
    seg_dir = out / "precomputed" / "segmentation"
    meshes = json.loads((out / "mesh" / "summary.json").read_text())
    assert meshes["segments"] > 0 and meshes["faces"] > 0
    label = int(next((seg_dir / "mesh").glob("*:0:0")).name.split(":")[0])
    assert len(cloudvolume.CloudVolume(f"precomputed://file://{seg_dir}", progress=False).mesh.get(label).faces)
    annotations = json.loads((out / "precomputed" / "annotations.json").read_text())
    assert annotations["synapses"] == len(pd.read_parquet(out / "synapses.parquet"))
    for layer in ("synapses", "somata", "matches"):
        assert json.loads((out / "precomputed" / layer / "info").read_text())["@type"] == "neuroglancer_annotations_v1"
    assert (seg_dir / "segment_properties" / "info").exists()
    report = tmp_path / "report.zip"
    result = subprocess.run(cmd[:-2] + ["--report", str(report)], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(report) as z:
        names = z.namelist()
        assert any(n.endswith("report.html") for n in names)
        figures = [n for n in names if n.endswith((".png", ".svg")) and "/data/raw/" in n]
        for figure in ("neurons.png", "connectivity.png", "like_to_like_orientation.png"):  # meshes, adjacency
            assert any(n.endswith(f"/{figure}") for n in figures), (figure, names)
        for name in figures:
            data = z.read(name)
            assert len(data) > 1000 and (data[:8] == b"\x89PNG\r\n\x1a\n" or b"<svg" in data[:2000]), name
