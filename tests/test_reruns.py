"""Reproducibility of whole runs: determinism, resuming a killed run, adding a dataset, provenance, extending a dataset.

Each test drives the real workflow on the tiny phantom (tests/helpers.py: one block per stage, 1.5-2 min on 2 cores)
and compares `output_digests` (decoded zarr arrays, parquet tables, eval/*.json) between runs. One clean run is
shared by the module (`clean_run`); the other tests make their own runs in their own directories.

What a resume needs, found here: after SIGKILL Snakemake leaves its lock behind (.snakemake/locks), so the same
command fails with LockException until `snakemake --unlock`; and outputs of the jobs that were running (directory
outputs such as volume.zarr/raw included) are flagged incomplete, so the command must rerun them
(`--rerun-incomplete`, which profiles/local sets; without it Snakemake stops with IncompleteFilesException).
"""

import base64
import contextlib
import copy
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO, TINY, failure_report, output_digests, snakemake_cmd, snakemake_env, write_config

DATASET = next(iter(TINY["datasets"]))
CORES = ("--cores", "2")
# The command `make demo` runs (profiles/local: rerun-incomplete, rerun triggers, cores 2).
PROFILE = ("--profile", str(REPO / "profiles" / "local"))
# Jobs of a run that are not tied to one dataset (no `dataset` wildcard). With train.enabled (not in TINY) `train`
# runs once, on the first phantom dataset, as models/{dataset}: adding a dataset would not rerun it either.
GLOBAL_RULES = {"all"}
RUN_TIMEOUT = 1200


@dataclass
class Run:
    work: Path
    digests: dict
    jobs: list  # (rule, wildcards) per job, from Snakemake's log
    seconds: float


def _snakemake(work: Path, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return _run(snakemake_cmd(work, *args), work, timeout)


def _run(cmd: list, work: Path, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=snakemake_env())
    assert result.returncode == 0, failure_report(result, work)
    return result


def _jobs(log: str) -> list:
    """(rule, {wildcard: value}) of every job a Snakemake log (a run's or a dry run's) lists, in order."""
    jobs = []
    for line in log.splitlines():
        rule = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if rule:
            jobs.append((rule.group(1), {}))
        elif jobs and line.startswith("    wildcards: "):
            pairs = line.split(": ", 1)[1].split(", ")
            jobs[-1] = (jobs[-1][0], dict(p.split("=", 1) for p in pairs))
    return jobs


def _rule_counts(jobs, dataset=None) -> dict:
    counts = {}
    for rule, wildcards in jobs:
        if dataset is None or wildcards.get("dataset") == dataset:
            counts[rule] = counts.get(rule, 0) + 1
    return counts


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(k for k in keys if a.get(k) != b.get(k)) or "none"


def _clean_run(work: Path) -> Run:
    write_config(work, TINY)
    start = time.monotonic()
    result = _snakemake(work, *CORES)
    seconds = time.monotonic() - start
    digests = output_digests(work / "results")
    for name in ("volume.zarr/segmentation/0", "volume.zarr/affinities/0", "segments.parquet", "synapses.parquet",
                 "neurons.parquet", "edges.parquet", "eval/metrics.json"):
        assert f"{DATASET}/{name}" in digests, f"output_digests misses {name}: {sorted(digests)}"
    return Run(work, digests, _jobs(result.stderr), seconds)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Run:
    return _clean_run(tmp_path_factory.mktemp("clean"))


# --- 1. determinism -------------------------------------------------------------------------------------------


def test_two_clean_runs_give_identical_outputs(clean_run, tmp_path):
    other = _clean_run(tmp_path / "second")
    assert other.digests == clean_run.digests, f"outputs differ between two clean runs: " \
                                               f"{_diff(other.digests, clean_run.digests)}"
    assert _rule_counts(other.jobs) == _rule_counts(clean_run.jobs)


# --- 2. resume after SIGKILL ----------------------------------------------------------------------------------

KILL_SEED = 1729


def _incomplete(work: Path) -> set:
    """Outputs Snakemake has flagged incomplete (jobs started, not finished): .snakemake/incomplete holds one file
    per output, named by the output path in urlsafe base64 (split into folders when longer than a file name)."""
    root = work / ".snakemake" / "incomplete"
    if not root.is_dir():
        return set()
    out = set()
    for f in root.rglob("*"):
        if f.is_file():
            name = "".join(f.relative_to(root).parts)
            out.add(base64.urlsafe_b64decode(name).decode())
    return out


def _finished(log: Path) -> int:
    return log.read_text(errors="replace").count("Finished jobid")


def _run_and_kill(work: Path, cmd: list, log: Path, ready, delay: float = 0.0) -> set:
    """Start `cmd` in its own process group; once `ready(finished jobs)` holds, wait `delay` s and, at a moment
    Snakemake has a job running, SIGKILL the whole group. Returns the outputs flagged incomplete at the kill."""
    deadline = time.monotonic() + RUN_TIMEOUT
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=snakemake_env(),
                                start_new_session=True)
        try:
            while not ready(_finished(log)):
                assert proc.poll() is None, f"the run ended before the kill point:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "timed out waiting for the kill point"
                time.sleep(0.02)
            time.sleep(delay)
            while not (running := _incomplete(work)):
                assert proc.poll() is None, f"the run ended before the kill point:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "timed out waiting for a running job"
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return running


def _assert_nothing_trusted_is_half_written(work: Path, incomplete: set) -> None:
    """Every file under results/ that a rerun would take as is (not under an output flagged incomplete, not a
    temporary file of an atomic write) reads back whole: JSON parses, tables and arrays decode."""
    import numpy as np
    import pandas as pd
    import zarr

    def distrusted(rel: str) -> bool:
        return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in incomplete)

    checked, bad = 0, []
    results = work / "results"
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(work).as_posix()
        if not path.is_file() or distrusted(rel) or ".tmp" in path.name or path.suffix == ".log":
            continue
        try:
            if path.suffix == ".json" or path.name in (".zarray", ".zattrs", ".zgroup"):
                json.loads(path.read_text())
            elif path.suffix == ".parquet":
                pd.read_parquet(path)
            elif path.suffix == ".npz":
                with np.load(path) as f:
                    [f[k] for k in f.files]
            elif path.suffix == ".npy":
                np.load(path)
            else:
                continue
            checked += 1
        except Exception as e:  # noqa: BLE001 - any decoding error is the finding
            bad.append(f"{rel}: {type(e).__name__}: {e}")
    for zarray in sorted(results.rglob("*.zarr/**/.zarray")):
        rel = zarray.parent.relative_to(work).as_posix()
        if distrusted(rel):
            continue
        try:
            np.asarray(zarr.open_array(str(zarray.parent), mode="r")[...])
        except Exception as e:  # noqa: BLE001
            bad.append(f"{rel}: {type(e).__name__}: {e}")
    assert not bad, "half-written outputs a rerun would trust:\n" + "\n".join(bad)
    assert checked, "nothing was checked"


@pytest.mark.parametrize("seed", [KILL_SEED, 7, 2026])
def test_killed_run_resumes_to_identical_outputs(clean_run, tmp_path, seed):
    """SIGKILL the run's whole process group three times, each time while a job runs: first inside the phantom job
    once its directory outputs exist, then after two seeded numbers of finished jobs (plus seeded delays; one
    fault-injection run per seed). After
    each kill nothing a rerun would trust is half-written; `snakemake --unlock` and the same command (make demo's:
    profiles/local) resume, and the outputs equal a clean run's."""
    rng = random.Random(seed)
    total = len(clean_run.jobs)
    # cumulative finished-job counts at which to kill; the last leaves >= 5 jobs so the run is still going
    points = sorted(rng.sample(range(1, total - 5), 2))
    delays = [rng.uniform(0.0, 2.0) for _ in points]
    work = tmp_path / "killed"
    write_config(work, TINY)
    cmd = snakemake_cmd(work, *PROFILE, *CORES)
    raw = work / "results" / DATASET / "volume.zarr" / "raw"
    kills = [("phantom writing", lambda n: (raw / "0").is_dir(), 0.0)]
    kills += [(f"after {p} jobs", lambda n, p=p: done + n >= p, d) for p, d in zip(points, delays)]
    done, history = 0, []
    for attempt, (name, ready, delay) in enumerate(kills):
        log = work / f"attempt{attempt}.log"
        incomplete = _run_and_kill(work, cmd, log, ready, delay)
        done += _finished(log)
        history.append((name, round(delay, 2), sorted(incomplete)))
        _assert_nothing_trusted_is_half_written(work, incomplete)
        if attempt == 0:
            # what the command needs: the phantom's directory outputs are flagged incomplete (without
            # --rerun-incomplete Snakemake refuses to go on), and the killed Snakemake's lock stays behind
            assert f"results/{DATASET}/volume.zarr/raw" in incomplete, history
            plain = subprocess.run(snakemake_cmd(work, *CORES, "--dry-run"), capture_output=True, text=True,
                                   timeout=300, env=snakemake_env())
            assert plain.returncode != 0 and "IncompleteFilesException" in plain.stdout + plain.stderr, \
                plain.stdout[-2000:] + plain.stderr[-2000:]
            locked = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=snakemake_env())
            assert locked.returncode != 0 and "LockException" in locked.stdout + locked.stderr, \
                locked.stdout[-2000:] + locked.stderr[-2000:]
        _snakemake(work, "--unlock")
    result = _run(cmd, work)  # the same command, to the end
    assert _jobs(result.stdout + result.stderr), f"nothing left to do after the kills {history}"
    digests = output_digests(work / "results")
    assert digests == clean_run.digests, f"resumed run (kills {history}) differs from a clean run: " \
                                         f"{_diff(digests, clean_run.digests)}"
    again = _run(cmd + ["--dry-run"], work)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]


def test_block_markers_survive_sigkill_whole_or_not_at_all(tmp_path):
    """The per-block markers (blocks.write_marker -> atomic_write_json) a rerun trusts are never seen half-written:
    a writer SIGKILLed at seeded moments leaves the previous marker or the new one, each parsing whole."""
    marker = tmp_path / "blocks" / "stage" / "z0_y0_x0.json"
    script = textwrap.dedent(f"""
        from connectomix.blocks import BlockGrid, write_marker
        block = BlockGrid((64, 64, 64), (32, 32, 32)).block("z0_y0_x0")
        i = 0
        while True:
            i += 1
            write_marker({str(marker)!r}, block, round=i, payload=[i] * 50_000)
    """)
    rng = random.Random(KILL_SEED)
    seen = set()
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, env=snakemake_env())
        time.sleep(0.4 + rng.uniform(0.0, 0.6))
        assert proc.poll() is None, "the marker writer died by itself"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if marker.exists():
            payload = json.loads(marker.read_text())
            assert payload["block"] == "z0_y0_x0" and payload["payload"] == [payload["round"]] * 50_000
            seen.add(payload["round"])
    assert seen, "the writer never completed a marker"


# --- 3. adding a dataset --------------------------------------------------------------------------------------


def _with_second_dataset(name: str) -> dict:
    config = copy.deepcopy(TINY)
    config["datasets"][name] = copy.deepcopy(TINY["datasets"][DATASET])
    config["datasets"][name]["phantom"]["seed"] = 11
    return config


def _mtimes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_adding_a_dataset_schedules_only_its_jobs(clean_run, tmp_path):
    """With dataset A done, adding B to the config plans only B's jobs (and the global `all`), none of A's; after
    the run A's outputs are untouched (same digests, same files, same modification times)."""
    work = tmp_path / "grow"
    shutil.copytree(clean_run.work, work, symlinks=True)  # copy2 keeps modification times; .snakemake travels too
    before = _mtimes(work / "results" / DATASET)
    b = "second"
    write_config(work, _with_second_dataset(b))

    plan = _jobs(_snakemake(work, *CORES, "--dry-run").stdout)
    assert plan, "the dry run lists no jobs"
    of_a = [(rule, wc) for rule, wc in plan if wc.get("dataset") == DATASET]
    assert not of_a, f"adding dataset {b} reschedules jobs of {DATASET}: {of_a}"
    global_jobs = {rule for rule, wc in plan if "dataset" not in wc}
    assert global_jobs <= GLOBAL_RULES, f"unexpected jobs without a dataset: {global_jobs - GLOBAL_RULES}"
    # B gets the whole pipeline: the same jobs, rule by rule, as the clean run of A
    assert _rule_counts(plan, b) == _rule_counts(clean_run.jobs, DATASET)

    _snakemake(work, *CORES)
    digests = output_digests(work / "results")
    of_a = {k: v for k, v in digests.items() if k.startswith(f"{DATASET}/")}
    assert of_a == clean_run.digests, f"outputs of {DATASET} changed: {_diff(of_a, clean_run.digests)}"
    assert any(k.startswith(f"{b}/") for k in digests)
    assert _mtimes(work / "results" / DATASET) == before, "files of the finished dataset were rewritten"


# --- 4. provenance --------------------------------------------------------------------------------------------

# Where each final output of a dataset records its provenance: zarr arrays in their group attributes
# (attrs["connectomix"]["provenance"]), tables in the JSON summary their step writes next to them (parquet files
# carry none). None: no provenance anywhere.
PROVENANCE_OF = {
    "volume.zarr/raw": "zarr",
    "volume.zarr/affinities": "zarr",
    "volume.zarr/synapse_maps": "zarr",
    "volume.zarr/segmentation": "zarr",
    "volume.zarr/clefts": "zarr",
    "segments.parquet": "segment.json",
    "synapses.parquet": "synapses/summary.json",
    "neurons.parquet": "connectome/summary.json",
    "edges.parquet": "connectome/summary.json",
    "skeletons.parquet": "skeletonize/merge.json",
    "matches.parquet": "coregister.json",
    "morphology.parquet": "skeletonize/morphology.json",
    "precomputed/segmentation/mesh/info": "mesh/summary.json",
}
# The config section each output's recorded config comes from (its keys must all be there).
CONFIG_SECTION = {
    "volume.zarr/segmentation": "segment",
    "segments.parquet": "segment",
    "synapses.parquet": "synapses",
    "volume.zarr/clefts": "synapses",
    "neurons.parquet": "connectome",
    "edges.parquet": "connectome",
    "skeletons.parquet": "skeletonize",
    "precomputed/segmentation/mesh/info": "mesh",
}
# Outputs that do not record provenance, or whose `inputs` are not checksums of the data they were made from
# (strict xfails; none left).
NO_PROVENANCE: dict = {}
NO_INPUT_CHECKSUMS: dict = {}
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _provenance(out: Path, output: str):
    where = PROVENANCE_OF[output]
    if where is None:
        return None
    if where == "zarr":
        attrs = json.loads((out / output / ".zattrs").read_text())
        return attrs.get("connectomix", {}).get("provenance")
    return json.loads((out / where).read_text()).get("provenance")


def _xfail_if(known: dict, output: str):
    marks = [pytest.mark.xfail(strict=True, reason=f"provenance gap: {known[output]}")] if output in known else []
    return pytest.param(output, marks=marks, id=output)


@pytest.mark.parametrize("output", [_xfail_if(NO_PROVENANCE, o) for o in PROVENANCE_OF])
def test_outputs_record_version_and_config(clean_run, output):
    from connectomix import __version__, config, provenance
    from connectomix.workflow.predict import locate_shipped_models

    out = clean_run.work / "results" / DATASET
    assert (out / output).exists(), f"{output} missing from the run"
    prov = _provenance(out, output)
    assert prov, f"{output}: no provenance at {PROVENANCE_OF[output]}"
    assert set(prov) >= {"connectomix_version", "config", "config_hash", "inputs"}, sorted(prov)
    assert prov["connectomix_version"].startswith(__version__), prov["connectomix_version"]
    assert prov["config"], f"{output}: empty config in its provenance"
    assert prov["config_hash"] == provenance.config_hash(prov["config"])
    section = CONFIG_SECTION.get(output)
    if section:
        full = config.validate(copy.deepcopy(TINY), source="test")
        with contextlib.chdir(clean_run.work):  # as the workflow does there: shipped models by their repository path
            locate_shipped_models(full, REPO)
        cfg = full[section]
        recorded = prov["config"].get(section, prov["config"])  # skeletonize nests its params under its name
        missing = sorted(set(cfg) - set(recorded))
        assert not missing, f"{output}: provenance config lacks {section}.{missing}"
        assert {k: recorded[k] for k in cfg} == json.loads(json.dumps(cfg)), f"{output}: config differs"


@pytest.mark.parametrize("output", [_xfail_if(NO_INPUT_CHECKSUMS, o) for o in PROVENANCE_OF
                                    if o != "volume.zarr/raw"])  # the phantom has no inputs: made from params
def test_outputs_record_input_checksums(clean_run, output):
    out = clean_run.work / "results" / DATASET
    prov = _provenance(out, output)
    assert prov, f"{output}: no provenance"
    assert prov["inputs"], f"{output}: no inputs recorded"
    not_checksums = {k: v for k, v in prov["inputs"].items() if not SHA256.match(str(v))}
    assert not not_checksums, f"{output}: inputs that are not sha256 checksums: {not_checksums}"


# Which upstream array each array output's provenance names as an input.
ARRAY_INPUTS = {"affinities": ["raw"], "synapse_maps": ["raw"], "segmentation": ["affinities"],
                "clefts": ["synapse_maps", "segmentation"]}


def test_array_checksums_are_their_content_and_chain_up(clean_run):
    """Each array's recorded checksum is the Merkle digest of its blocks' values (recomputed here from the array),
    and each output names exactly those checksums as its inputs."""
    import numpy as np

    from connectomix import io, provenance
    from connectomix.blocks import BlockGrid

    out = clean_run.work / "results" / DATASET
    volume = out / "volume.zarr"
    cfg = json.loads((out / "segment" / "setup.json").read_text())
    recorded = {name: io.read_meta(volume, name).attrs[provenance.DIGEST_ATTR]
                for name in ("raw", *ARRAY_INPUTS)}
    assert recorded["raw"] == provenance.data_digest(np.asarray(io.open_array(volume, "raw")[...]))
    for name in ARRAY_INPUTS:
        array = io.open_array(volume, name)
        grid = BlockGrid(array.shape[-3:], cfg["block_shape"], (0, 0, 0), array.chunks[-3:])
        parts = {b.id: provenance.data_digest(np.asarray(array[(Ellipsis, *b.write.slices)])) for b in grid}
        assert recorded[name] == provenance.merkle_digest(array.shape, array.dtype, parts), name
        inputs = io.read_meta(volume, name).attrs["provenance"]["inputs"]
        for upstream in ARRAY_INPUTS[name]:
            assert inputs[upstream] == recorded[upstream], f"{name}: input {upstream}"
    seg_summary = json.loads((out / "segment.json").read_text())["provenance"]["inputs"]
    assert seg_summary["affinities"] == recorded["affinities"]
    connectome = json.loads((out / "connectome" / "summary.json").read_text())["provenance"]["inputs"]
    assert connectome["synapses"] == provenance.file_checksum(out / "synapses.parquet")
    assert connectome["segments"] == provenance.file_checksum(out / "segments.parquet")


# --- 5. extending a dataset by new blocks -------------------------------------------------------------------

# A source dataset (the phantom's raw exported to a zarr) read through an ROI that grows by one column of blocks
# in +x. Blocks are 64 voxels wide in x, wider than every stage's halo (predict context 44, segment halo 24,
# skeletonize halo 32): only the last old column reads the new region, and fragments of the columns before it
# can only change through the affinities of the last old column, which they read up to a halo away.
GROW_SOURCE_SHAPE = (16, 64, 320)
GROW_OLD_SHAPE = [16, 64, 256]
GROW_BLOCK = [16, 64, 64]
BLOCKWISE = {"predict_block", "segment_fragments", "segment_rag", "segment_relabel", "synapses_block",
             "skeletonize_block"}
# Blockwise steps whose reruns follow from ROIs and inputs alone (relabel and skeletonize also follow the lookup
# table, known only once agglomeration ran).
BY_ROI = {"predict_block", "segment_fragments", "segment_rag", "synapses_block"}
SETUPS = ("predict_setup", "segment_setup", "synapses_setup")


def _grow_config(source: Path, shape) -> dict:
    config = copy.deepcopy(TINY)
    config["datasets"] = {"grow": {"voxel_size": [40, 8, 8],
                                   "source": {"path": str(source), "format": "zarr"},
                                   "roi": {"offset": [0, 0, 0], "shape": list(shape)}}}
    config["blocks"] = {"shape": GROW_BLOCK, "per_job": [1, 1, 1]}
    return config


def _x_columns(jobs, rule) -> set:
    """The x block index of every batch job of `rule` (batches are single blocks here: per_job [1, 1, 1])."""
    out = set()
    for r, wc in jobs:
        if r == rule:
            first, last = wc["batch"].split("_x")[1].split("-")
            assert first == last, wc
            out.add(int(first))
    return out


def test_extending_a_dataset_reruns_only_blocks_near_the_new_ones_and_keeps_ids(tmp_path):
    """Grow a source dataset's ROI by one column of blocks in +x: ingest extends `raw` in place (the old voxels
    keep their values). Once the setups ran (`--until` them; before that the dry run lists every block behind
    them, rules/common.smk), the dry run plans the new column and, of the old ones, only those that read it or
    read what changed (the last two); the run does just that, plus the relabel jobs whose lookup-table rows
    changed and the skeleton jobs that read a relabelled block. Afterwards the fragments of the columns away from
    the face are unchanged and every segment away from the face keeps its voxels and its id."""
    import numpy as np
    import zarr

    from connectomix import io
    from connectomix.phantom import PhantomParams, generate

    params = {**TINY["datasets"][DATASET]["phantom"], "shape": list(GROW_SOURCE_SHAPE)}
    raw = generate(PhantomParams.from_dict(params), (40, 8, 8)).raw
    source = tmp_path / "source.zarr"
    array = zarr.create_array(str(source), shape=raw.shape, chunks=(8, 64, 64), dtype="uint8", fill_value=0,
                              zarr_format=2)
    array[...] = raw
    work = tmp_path / "work"
    write_config(work, _grow_config(source, GROW_OLD_SHAPE))
    start = time.monotonic()
    first = _jobs(_snakemake(work, *CORES).stderr)
    first_s = time.monotonic() - start
    volume = work / "results" / "grow" / "volume.zarr"
    seg_a = np.asarray(io.open_array(volume, "segmentation")[...])
    frag_a = np.asarray(io.open_array(volume, "fragments")[...])
    old_columns = GROW_OLD_SHAPE[2] // GROW_BLOCK[2]
    assert _x_columns(first, "segment_fragments") == set(range(old_columns))

    write_config(work, _grow_config(source, GROW_SOURCE_SHAPE))
    start = time.monotonic()
    setups = _jobs(_snakemake(work, *CORES, "--until", *SETUPS).stderr)
    assert {rule for rule, _ in setups} == {"ingest", *SETUPS}, setups
    plan = _jobs(_snakemake(work, *CORES, "--dry-run").stdout)
    new, last = old_columns, old_columns - 1
    near = {last - 1, last, new}
    for rule in BLOCKWISE:
        assert new in _x_columns(plan, rule), (rule, _x_columns(plan, rule))
    for rule in BY_ROI:
        assert _x_columns(plan, rule) <= near, (rule, sorted(_x_columns(plan, rule)))
    assert all(wc.get("dataset", "grow") == "grow" for _, wc in plan)
    planned_old = sum(1 for rule, wc in plan if rule in BLOCKWISE and _x_columns([(rule, wc)], rule) != {new})

    second = _jobs(_snakemake(work, *CORES).stderr)
    second_s = time.monotonic() - start
    for rule in BY_ROI:
        assert _x_columns(second, rule) == _x_columns(plan, rule), rule
    # a skeleton block reads its neighbours' segmentation (halo < one block): it reruns when one of those relabels
    relabeled = _x_columns(second, "segment_relabel")
    reads_relabeled = {c for c in range(new + 1) if {c - 1, c, c + 1} & relabeled}
    assert _x_columns(second, "skeletonize_block") <= reads_relabeled
    rerun_far = sum(1 for rule, wc in second if rule in BLOCKWISE - {"skeletonize_block"}
                    and _x_columns([(rule, wc)], rule) - near)
    assert np.array_equal(np.asarray(io.open_array(volume, "raw")[...]), raw[:, :, :GROW_SOURCE_SHAPE[2]])
    seg_b = np.asarray(io.open_array(volume, "segmentation")[...])
    frag_b = np.asarray(io.open_array(volume, "fragments")[...])
    assert seg_b.shape[2] == GROW_SOURCE_SHAPE[2]
    old = (slice(None), slice(None), slice(0, GROW_OLD_SHAPE[2]))
    # blocks before the last two old columns read nothing that changed: their fragments (ids included) are equal
    untouched = (last - 1) * GROW_BLOCK[2]
    assert np.array_equal(frag_b[..., :untouched], frag_a[..., :untouched])
    far = [s for s in np.unique(seg_a) if s and np.nonzero(seg_a == s)[2].max() < untouched]
    same_voxels = kept = 0
    for sid in far:
        where = seg_a == sid
        if np.array_equal(seg_b[old] == sid, where):
            kept += 1
        if len(np.unique(seg_b[old][where])) == 1 and (seg_b[old] == seg_b[old][where][0]).sum() == where.sum():
            same_voxels += 1
    print(f"extension: first run {first_s:.0f} s ({len(first)} jobs); dry run after growth plans {len(plan)} jobs "
          f"({planned_old} blockwise jobs of old blocks); second run {second_s:.0f} s ({len(second)} jobs, "
          f"{rerun_far} blockwise jobs of columns away from the face; x columns run per step: "
          f"{ {rule: sorted(_x_columns(second, rule)) for rule in sorted(BLOCKWISE)} }); "
          f"segments away from the face: {len(far)}, same voxels {same_voxels}, same id and voxels {kept}")
    assert len(far) >= 5
    assert kept == same_voxels, "a segment away from the face kept its voxels but not its id"
    assert kept >= 0.9 * len(far), (kept, len(far))
    if kept == len(far):  # no lookup-table row of the far columns changed: nothing there may rerun
        assert rerun_far == 0, rerun_far
        assert relabeled <= near, sorted(relabeled)


# --- 6. a changed source -----------------------------------------------------------------------------------------


def test_a_replaced_source_reruns_what_read_it_and_equals_a_fresh_run(tmp_path):
    """Replace a dataset's source file by other data of the same shape and run again: ingest reruns (the source's
    identity is one of its params), the predict blocks whose raw voxels changed rerun (the blocks' digests from
    ingest), everything after them follows, and the outputs equal a fresh run's on the new file."""
    import h5py

    from connectomix.phantom import PhantomParams, generate

    def phantom_raw(seed):
        params = {**TINY["datasets"][DATASET]["phantom"], "shape": list(GROW_OLD_SHAPE), "seed": seed}
        return generate(PhantomParams.from_dict(params), (40, 8, 8)).raw

    def write(path, raw):
        with h5py.File(path, "w") as f:
            f.create_dataset("stack", data=raw)

    def config(source):
        config = copy.deepcopy(TINY)
        config["datasets"] = {"em": {"voxel_size": [40, 8, 8], "source": {"path": str(source), "key": "stack"}}}
        config["blocks"] = {"shape": GROW_BLOCK, "per_job": [1, 1, 1]}
        return config

    source = tmp_path / "in" / "src.h5"
    source.parent.mkdir()
    write(source, phantom_raw(31))
    work = tmp_path / "work"
    write_config(work, config(source))
    _snakemake(work, *CORES)
    write(source, phantom_raw(32))
    plan = _rule_counts(_jobs(_snakemake(work, *CORES, "--dry-run").stdout))
    assert plan.get("ingest") == 1, plan
    _snakemake(work, *CORES)
    again = _snakemake(work, *CORES, "--dry-run")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
    fresh = tmp_path / "fresh"
    write_config(fresh, config(source))
    _snakemake(fresh, *CORES)
    rerun, expected = output_digests(work / "results"), output_digests(fresh / "results")
    assert "em/volume.zarr/segmentation/0" in expected
    assert rerun == expected, f"outputs that differ from a fresh run: {_diff(rerun, expected)}"
