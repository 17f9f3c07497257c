"""End to end: the whole workflow on a small phantom, through Snakemake, as `make demo` runs it.

One block per stage keeps it within CI's budget; block invariance has its own tests per stage.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

TINY = {
    "results_dir": "results",
    "datasets": {
        "tiny": {
            "voxel_size": [40, 8, 8],
            "phantom": {"seed": 3, "shape": [16, 128, 128], "n_neurons": 6, "n_synapses": 8,
                        "n_orphan_synapses": 8, "soma_radius_nm": 170.0, "dendrite_length_nm": 700.0,
                        "axon_length_nm": 1500.0},
        }
    },
    "storage": {"chunk_shape": [8, 64, 64]},
    "blocks": {"shape": [16, 128, 128]},
    "pyramid": {"levels": 2},
}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    (work / "config.yaml").write_text(yaml.safe_dump(TINY))
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "config.yaml"), "--cores", "2", "--quiet", "rules"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in (work / "results").rglob("*.log")) \
        if result.returncode else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:] + logs
    return work / "results" / "tiny", cmd, env


def test_pipeline_writes_every_stage_output(pipeline_run):
    out, _, _ = pipeline_run
    for name in ("gt/phantom.json", "segments.parquet", "morphology.parquet", "synapses.parquet",
                 "neurons.parquet", "edges.parquet", "matches.parquet", "eval/metrics.json",
                 "neuroglancer.json"):
        assert (out / name).exists(), f"missing {name}"
    for array in ("raw", "affinities", "synapse_maps", "segmentation"):
        assert (out / "volume.zarr" / array / "0" / ".zarray").exists(), f"missing array {array}"


def test_pipeline_metrics_are_measured_against_ground_truth(pipeline_run):
    out, _, _ = pipeline_run
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    for key in ("segmentation.voi_split", "segmentation.voi_merge", "segmentation.arand",
                "synapses.f1", "connectome.edge_f1", "coregister.accuracy", "skeletons.erl_nm"):
        assert key in metrics, f"metrics.json lacks {key}: {sorted(metrics)}"
    # a real segmentation of real predictions beats the trivial one that puts every voxel in one segment
    voi = metrics["segmentation.voi_split"] + metrics["segmentation.voi_merge"]
    assert voi < _entropy_bits(out), (voi, _entropy_bits(out))
    segments = pd.read_parquet(out / "segments.parquet")
    assert len(segments) > 10


@pytest.mark.xfail(strict=True, reason="issue 4: VOI <= 0.15 needs better U-Net affinities (see closing note)")
def test_pipeline_segmentation_meets_the_accuracy_target(pipeline_run):
    out, _, _ = pipeline_run
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
    _, cmd, env = pipeline_run
    result = subprocess.run(cmd[:-2] + ["-n"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr
