"""SLURM, for real: the phantom pipeline through `--profile profiles/slurm` on a single-node cluster equals a local run.

The cluster test (marker `slurm`; `make test-slurm`, run by .ci/run after `make test`) starts its own cluster with
scripts/slurm-cluster.sh in a temporary directory and stops it afterwards, also when the test fails. To use a cluster
already started with `scripts/slurm-cluster.sh start DIR`, set CONNECTOMIX_SLURM_CLUSTER=DIR (it is left running).
The test is skipped, with the reason, when SLURM or munge is not installed or the user is not root (slurmd needs
root); CONNECTOMIX_REQUIRE_SLURM=1 (set by .ci/run) turns those skips into failures.

The node has no GPU, so the run overrides the profile's GPU requests (train, predict_block) with gpu=0, its CPUs and
memory with the node's (--cores, --resources), and uses `squeue` for job status (the test cluster has no accounting
database, so `sacct` does not work). Everything else comes from profiles/slurm, block grouping included.

Compared with the local run (`--profile profiles/local`): every array in volume.zarr, every parquet table and the
metric files eval/*.json (see helpers.output_digests). Not compared: JSON summaries with timings, figures, logs.

The other tests check the profile without a cluster and run in `make test`.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from helpers import REPO, SNAKEMAKE, TINY, failure_report, output_digests, snakemake_cmd, snakemake_env, write_config

PROFILE_DIR = REPO / "profiles" / "slurm"
PROFILE = yaml.safe_load((PROFILE_DIR / "config.yaml").read_text())
CLUSTER_SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
# two blocks per blockwise stage (split in y): the profile's grouping must put both in one cluster job
# align on, so that every group of the profile (align_blocks included) runs on the cluster
SLURM_TINY = {**TINY, "blocks": {"shape": [16, 64, 128]}, "align": {"enabled": True}}
# measured on 2 shared cores: 357-736 s for the cluster run, depending on the load (docs/slurm.md)
SLURM_TIMEOUT_S = 1200
LOCAL_TIMEOUT_S = 600


# --- the profile, without a cluster ----------------------------------------------------------------------------


def _rules() -> dict:
    """{rule name: its source text} over rules/*.smk."""
    rules = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in ("\n" + smk.read_text()).split("\nrule ")[1:]:
            rules[block.split(":", 1)[0].strip()] = block
    return rules


def _blockwise_rules() -> set:
    """Rules with one job per batch of blocks: their output is a batch marker (PATHS.batch_marker, whose pattern
    holds the {batch} wildcard)."""
    blockwise = set()
    for name, text in _rules().items():
        output = re.search(r"\n    output:\n(.*?)\n    \w+:", text, re.S)
        if output and "PATHS.batch_marker(" in output.group(1):
            blockwise.add(name)
    return blockwise


def test_slurm_profile_groups_every_blockwise_rule():
    groups = PROFILE["groups"]
    blockwise = _blockwise_rules()
    assert blockwise >= {"predict_block", "segment_fragments", "segment_rag", "segment_relabel", "synapses_block",
                         "skeletonize_block"}
    assert set(groups) == blockwise
    assert set(PROFILE["group-components"]) == set(groups.values())
    assert all(n > 1 for n in PROFILE["group-components"].values())


def test_slurm_profile_names_existing_rules_and_requests_gpus():
    rules = _rules()
    assert set(PROFILE["set-resources"]) <= set(rules), set(PROFILE["set-resources"]) - set(rules)
    assert PROFILE["set-resources"]["train"]["gpu"] >= 1
    assert PROFILE["set-resources"]["predict_block"]["gpu"] >= 1
    # CPUs come from each rule's threads
    assert "cpus_per_task" not in PROFILE["default-resources"]


def test_slurm_profile_sizes_group_jobs_for_serial_members():
    """The plugin runs a group job's members one after another: one member per layer (group_slot, local scope), so
    a group job asks for one member's CPUs and memory and the sum of the runtimes."""
    assert PROFILE["default-resources"]["group_slot"] == 1
    assert PROFILE["resources"]["group_slot"] == 1
    assert PROFILE["set-resource-scopes"]["group_slot"] == "local"


def test_slurm_profile_plans_without_a_cluster(tmp_path):
    env = {k: v for k, v in snakemake_env().items() if k != "SLURM_CONF"}
    result = subprocess.run(
        [SNAKEMAKE, "-n", "--profile", "profiles/slurm", "--config", f"results_dir={tmp_path}/results"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "predict_block" in result.stdout and "This was a dry-run" in result.stdout


# --- the pipeline on a cluster -----------------------------------------------------------------------------------


def _skip(reason: str):
    if os.environ.get("CONNECTOMIX_REQUIRE_SLURM") == "1":
        pytest.fail(f"CONNECTOMIX_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def _node(env: dict) -> tuple:
    """(CPUs, memory in MB) of the cluster's first node."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%c %m"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    cpus, mem = out.stdout.split()[:2]
    return int(cpus), int(mem.rstrip("+"))


@pytest.fixture(scope="module")
def slurm_cluster():
    """SLURM_CONF and the node's (CPUs, MB) of a running single-node cluster: started here, or the one in
    CONNECTOMIX_SLURM_CLUSTER."""
    existing = os.environ.get("CONNECTOMIX_SLURM_CLUSTER")
    if existing:
        env = {**os.environ, "SLURM_CONF": str(Path(existing) / "slurm.conf")}
        yield env["SLURM_CONF"], _node(env)
        return
    missing = [c for c in ("sbatch", "squeue", "sinfo", "slurmctld", "slurmd", "munged", "mungekey")
               if shutil.which(c) is None]
    if missing:
        _skip(f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        _skip("starting a SLURM test cluster needs root (slurmd); or set CONNECTOMIX_SLURM_CLUSTER")
    if Path("/etc/slurm/slurm.conf").exists():
        _skip("/etc/slurm/slurm.conf exists: this machine has its own SLURM; set CONNECTOMIX_SLURM_CLUSTER to use "
              "a cluster started with scripts/slurm-cluster.sh")
    # munged wants every directory above its socket world-executable: not pytest's tmp_path (0700)
    cluster_dir = Path(tempfile.mkdtemp(prefix="connectomix-slurm-", dir="/tmp"))
    cluster_dir.chmod(0o755)
    try:
        start = time.monotonic()
        started = subprocess.run([str(CLUSTER_SCRIPT), "start", str(cluster_dir)], capture_output=True, text=True,
                                 timeout=180)
        assert started.returncode == 0, f"cluster did not start:\n{started.stdout}\n{started.stderr}"
        print(f"\nslurm test cluster started in {time.monotonic() - start:.1f} s ({cluster_dir})")
        env = {**os.environ, "SLURM_CONF": str(cluster_dir / "slurm.conf")}
        yield env["SLURM_CONF"], _node(env)
    finally:
        stopped = subprocess.run([str(CLUSTER_SCRIPT), "stop", str(cluster_dir)], capture_output=True, text=True,
                                 timeout=180)
        print(stopped.stderr)
        shutil.rmtree(cluster_dir, ignore_errors=True)


def _without_gpus(set_resources: dict) -> list:
    """The profile's set-resources as --set-resources arguments, GPU requests set to 0 (the node has none)."""
    return [f"{rule}:{name}={0 if name == 'gpu' else value}"
            for rule, resources in set_resources.items() for name, value in resources.items()]


def _run(cmd: list, env: dict, timeout_s: int) -> tuple:
    start = time.monotonic()
    result = subprocess.run(["timeout", "--kill-after=30", str(timeout_s), *cmd], capture_output=True, text=True,
                            env=env, timeout=timeout_s + 60)
    return result, time.monotonic() - start


@pytest.mark.slurm
def test_pipeline_on_slurm_equals_local_run(slurm_cluster, tmp_path):
    slurm_conf, (cpus, _) = slurm_cluster
    threads = ["--max-threads", str(cpus)]  # the same in both runs (a smaller CI node than the rules' threads)

    # the local reference run, alongside the cluster run (which mostly waits on job start-up and status polls)
    local_work = tmp_path / "local"
    write_config(local_work, SLURM_TINY)
    local_log = tmp_path / "local.log"
    local_cmd = snakemake_cmd(local_work, "--profile", str(REPO / "profiles" / "local"), *threads)
    start = time.time()
    with local_log.open("w") as log:
        local = subprocess.Popen(["timeout", "--kill-after=30", str(LOCAL_TIMEOUT_S), *local_cmd], stdout=log,
                                 stderr=subprocess.STDOUT, text=True, env=snakemake_env())
    try:
        cluster_work = tmp_path / "slurm"
        write_config(cluster_work, SLURM_TINY)
        cmd = snakemake_cmd(
            cluster_work, "--profile", str(PROFILE_DIR), *threads,
            "--set-resources", *_without_gpus(PROFILE["set-resources"]),
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "3",
            "--slurm-keep-successful-logs",
        )
        result, slurm_s = _run(cmd, snakemake_env(SLURM_CONF=slurm_conf), SLURM_TIMEOUT_S)
        local_rc = local.wait(timeout=LOCAL_TIMEOUT_S + 60)
        local_s = local_log.stat().st_mtime - start  # its last output
    finally:
        if local.poll() is None:
            local.kill()
            local.wait()
    output = result.stdout + result.stderr
    failed_logs = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-1500:]}"
                            for p in sorted((cluster_work / ".snakemake" / "slurm_logs").rglob("*.log"))
                            if "Error" in p.read_text(errors="replace"))
    assert result.returncode == 0, f"rc {result.returncode}\n{failure_report(result, cluster_work)}\n{failed_logs}"
    assert local_rc == 0, local_log.read_text()[-5000:]

    # grouping: one cluster job for all blocks of each blockwise rule, so fewer cluster jobs than Snakemake jobs
    submitted = re.findall(r"has been submitted with SLURM jobid \d+ \(log: (\S+)\)", output)
    per_group = Counter(g for g in PROFILE["groups"].values() for log in submitted if f"/group_{g}_" in log)
    assert per_group == Counter(set(PROFILE["groups"].values())), per_group
    steps = int(re.findall(r"(\d+) of \1 steps \(100%\) done", output)[-1])
    assert len(submitted) < steps, (len(submitted), steps)
    print(f"\nslurm run {slurm_s:.0f} s ({len(submitted)} cluster jobs for {steps} steps), "
          f"local run (alongside) {local_s:.0f} s")

    on_slurm = output_digests(cluster_work / "results")
    here = output_digests(local_work / "results")
    assert {"tiny/volume.zarr/segmentation/0", "tiny/volume.zarr/affinities/0", "tiny/segments.parquet",
            "tiny/synapses.parquet", "tiny/edges.parquet", "tiny/eval/metrics.json"} <= set(here)
    assert set(on_slurm) == set(here), set(on_slurm) ^ set(here)
    assert [name for name in here if on_slurm[name] != here[name]] == []
