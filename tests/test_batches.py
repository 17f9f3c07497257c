"""Blockwise steps run one job per batch (a brick of blocks): batching changes the jobs, not the results.

The planning-time side (jobs per step bounded by blocks.max_jobs) is in tests/test_plan.py and
benchmarks/plan_scale.py; the batch helpers in tests/test_blocks.py.
"""

import subprocess

import pytest
from helpers import TINY, failure_report, output_digests, snakemake_cmd, snakemake_env, write_config

# 2 x 2 x 1 blocks of the tiny phantom (16 x 128 x 128)
FOUR_BLOCKS = {**TINY, "blocks": {"shape": [8, 64, 128]}}


def _run(work, per_job):
    write_config(work, {**FOUR_BLOCKS, "blocks": {**FOUR_BLOCKS["blocks"], "per_job": per_job}})
    result = subprocess.run(snakemake_cmd(work, "--cores", "2", "--quiet", "rules"), capture_output=True, text=True,
                            timeout=900, env=snakemake_env())
    assert result.returncode == 0, failure_report(result, work)
    return result


@pytest.mark.slow
def test_one_batch_per_step_gives_the_same_outputs_as_one_block_per_job(tmp_path):
    single = _run(tmp_path / "single", [1, 1, 1])
    batched = _run(tmp_path / "batched", [2, 2, 1])
    # the job counts Snakemake reports (`--quiet rules`): 4 jobs per blockwise step, then 1
    for rule in ("predict_block", "segment_fragments", "segment_rag", "segment_relabel", "synapses_block",
                 "skeletonize_block"):
        assert _jobs(single, rule) == 4 and _jobs(batched, rule) == 1, rule
    # every block still gets its marker; the rules track one batch marker per job
    results = tmp_path / "batched" / "results" / "tiny"
    for stage in ("predict", "segment_fragments", "segment_rag", "segment_relabel", "synapses", "skeletonize"):
        assert sorted(p.name for p in (results / "blocks" / stage).glob("z*_y*_x*.json")) == [
            "z0_y0_x0.json", "z0_y1_x0.json", "z1_y0_x0.json", "z1_y1_x0.json"], stage
        assert [p.name for p in (results / "blocks" / stage / "batches").iterdir()] == ["z0-1_y0-1_x0-0.json"]
    a, b = output_digests(tmp_path / "single" / "results"), output_digests(tmp_path / "batched" / "results")
    assert {"tiny/volume.zarr/segmentation/0", "tiny/segments.parquet", "tiny/synapses.parquet",
            "tiny/skeletons.parquet", "tiny/edges.parquet"} <= set(a)
    assert a == b, sorted(k for k in a if a[k] != b.get(k))


def _jobs(result, rule):
    for line in (result.stdout + result.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == rule and parts[1].isdigit():
            return int(parts[1])
    return None
