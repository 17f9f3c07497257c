"""Planning time and memory of `snakemake -n` (dry run: DAG only, nothing runs) for 10^3, 10^4 and 10^5 blocks.

    python benchmarks/plan_scale.py                      # 1e3, 1e4, 1e5 blocks (1e5 gives up after --limit s)
    python benchmarks/plan_scale.py --blocks 1000 10000  # some
    python benchmarks/plan_scale.py --profile-dir DIR    # also a cProfile of the largest finished case

Each case is a synthetic config with one ingest dataset whose source is a zarr array of the wanted shape written
as metadata only (no chunk is written, so a 10^5-block volume costs a few bytes of disk): `Workflow.shape` in
connectomix.workflow reads the shape with connectomix.ingest.probe, exactly as for real data. The grid is
(nz, ny, nx) blocks of the default blocks.shape. Every case runs `snakemake -n --quiet rules` in a fresh
results folder, in these modes:

* local: the default config (blocks.per_job auto: one job per brick of blocks, at most blocks.max_jobs jobs per
  blockwise step);
* local, one block per job: blocks.per_job [1, 1, 1], the DAG the workflow had before batching (one job per block
  and blockwise step);
* slurm profile (grouped): the default config with `--profile profiles/slurm` when that profile has `groups:`
  (job grouping changes the DAG; without groups it plans the same DAG as local).

Wall time, CPU time (user + system) and peak RSS come from /usr/bin/time -v around the snakemake process
(resource.getrusage of children when /usr/bin/time is absent). On a shared machine wall time includes waiting
for a core; CPU time does not. Writes results/plan_scale.json and results/plan_scale.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
GOAL_SECONDS = {10_000: 30.0}  # issue 8: plan 10^4 blocks in <= 30 s


def grid_for(n_blocks: int) -> tuple[int, int, int]:
    """A near-cubic (z, y, x) grid with exactly n_blocks blocks (n_blocks = 10^k)."""
    exps = {10**3: (10, 10, 10), 10**4: (16, 25, 25), 10**5: (40, 50, 50), 10**6: (100, 100, 100)}
    if n_blocks in exps:
        return exps[n_blocks]
    side = round(n_blocks ** (1 / 3))
    return side, side, max(1, n_blocks // (side * side))


def make_case(tmp: Path, grid: tuple[int, int, int], block_shape: list[int], blocks: dict | None = None) -> Path:
    """A config whose one dataset is a metadata-only zarr of grid * block_shape voxels; returns the config path.

    ``blocks`` updates the config's `blocks` section (e.g. {"per_job": [1, 1, 1]})."""
    import zarr

    shape = tuple(g * b for g, b in zip(grid, block_shape))
    tmp.mkdir(parents=True, exist_ok=True)
    source = tmp.parent / "source.zarr"
    if not source.exists():
        # zarr writes no chunk until data is assigned: this is only .zarray (a few hundred bytes).
        zarr.create_array(str(source), shape=shape, chunks=(8, 512, 512), dtype="uint8", fill_value=0,
                          zarr_format=2)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["results_dir"] = "results"
    config["blocks"].update(blocks or {})
    config["datasets"] = {"big": {"voxel_size": [40, 8, 8], "source": {"path": str(source), "format": "zarr"}}}
    # The Snakefile's `configfile: "config.yaml"` is read from the working directory, so the case runs with
    # --directory tmp and this file replaces the demo config (a --configfile would be merged with it, phantom
    # dataset included).
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def slurm_has_groups() -> bool:
    profile = ROOT / "profiles" / "slurm" / "config.yaml"
    if not profile.exists():
        return False
    text = yaml.safe_load(profile.read_text()) or {}
    return bool(text.get("groups") or text.get("group-components"))


def run_dry(config: Path, extra: list[str], limit: float, profile_out: Path | None = None) -> dict:
    """One `snakemake -n`; wall seconds, peak RSS (MB), job counts per rule, or a timeout."""
    cmd = [SNAKEMAKE, "-n", "--quiet", "rules", "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(config.parent), *extra]
    if profile_out is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile_out), *cmd]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    if timer:
        cmd = [timer, "-v", *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # own process group: on timeout the whole tree (time -> snakemake) is killed, not just /usr/bin/time
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"status": "timeout", "limit_s": limit, "wall_s": round(time.perf_counter() - start, 1)}
    proc = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"status": "ok" if proc.returncode == 0 else f"exit {proc.returncode}", "wall_s": round(wall, 2)}
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if match:
        out["peak_rss_mb"] = round(int(match.group(1)) / 1024, 1)
    else:  # ru_maxrss of children: the largest child so far (KB on Linux)
        out["peak_rss_mb"] = round(max(after.ru_maxrss, before.ru_maxrss) / 1024, 1)
    user = re.search(r"User time \(seconds\): ([\d.]+)", proc.stderr)
    system = re.search(r"System time \(seconds\): ([\d.]+)", proc.stderr)
    if user and system:
        out["cpu_s"] = round(float(user.group(1)) + float(system.group(1)), 2)
    else:
        out["cpu_s"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    counts = _job_counts(proc.stdout)
    if counts:
        out["jobs"] = counts.pop("total", sum(counts.values()))
        out["jobs_per_rule"] = counts
    if proc.returncode:
        out["stderr_tail"] = proc.stderr[-2000:]
    return out


def jobs_per_step(grid: tuple[int, int, int], blocks: dict | None) -> int:
    """Jobs of each blockwise step for this grid and `blocks` settings (the default config's, updated by blocks)."""
    from connectomix.blocks import BlockBatches, batch_shape_for

    settings = {"per_job": "auto", "max_jobs": 1000,
                **yaml.safe_load((ROOT / "config.yaml").read_text()).get("blocks", {}), **(blocks or {})}
    return len(BlockBatches(grid, batch_shape_for(grid, settings["per_job"], settings["max_jobs"])))


def _predicted_too_long(done: list[dict], grid: tuple[int, int, int], blocks: dict | None,
                        limit: float) -> dict | None:
    """A 'skipped' result when the smaller cases of this mode already show the case cannot finish within limit.

    Planning time follows the number of jobs (blockwise jobs are batches: their number need not grow with the
    blocks), so the prediction scales the last finished case by jobs per blockwise step."""
    if not done:
        return None
    last = max(done, key=lambda r: r["blocks"])
    if last["status"] == "timeout":
        return {"status": "skipped", "wall_s": None,
                "why": f"the {last['blocks']}-block case already exceeded the {limit:.0f} s limit"}
    ok = sorted((r for r in done if r["status"] == "ok"), key=lambda r: r["blocks"])
    if not ok:
        return None
    steps = [jobs_per_step(tuple(r["grid"]), r.get("blocks_config")) for r in ok]
    target = jobs_per_step(grid, blocks)
    exponent = 1.0
    if len(ok) >= 2 and ok[-1]["wall_s"] > ok[-2]["wall_s"] and steps[-1] > steps[-2]:
        exponent = max(1.0, math.log(ok[-1]["wall_s"] / ok[-2]["wall_s"]) / math.log(steps[-1] / steps[-2]))
    predicted = ok[-1]["wall_s"] * (target / steps[-1]) ** exponent
    if predicted > 2 * limit:
        return {"status": "skipped", "wall_s": None, "predicted_wall_s": round(predicted),
                "why": f"predicted {predicted:.0f} s from the {ok[-1]['blocks']}-block case ({target} against "
                       f"{steps[-1]} jobs per blockwise step, wall ~ jobs^{exponent:.2f}), more than twice the "
                       f"{limit:.0f} s limit; --force runs it anyway"}
    return None


def _job_counts(stdout: str) -> dict:
    counts = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "count"):
            counts[parts[0]] = int(parts[1])
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, nargs="+", default=[10**3, 10**4, 10**5])
    parser.add_argument("--limit", type=float, default=600.0, help="seconds before a dry run is abandoned")
    parser.add_argument("--force", action="store_true",
                        help="run every case, even one predicted (from the smaller cases) to exceed --limit")
    parser.add_argument("--profile-dir", type=Path, help="write a cProfile (.prof) of the largest finished case")
    parser.add_argument("--modes", nargs="+", metavar="MODE",
                        help="run only these modes (names as in the table, e.g. 'local')")
    parser.add_argument("--merge", action="store_true",
                        help="keep the previous results' rows for the cases not run now (other blocks or modes)")
    args = parser.parse_args(argv)

    block_shape = yaml.safe_load((ROOT / "config.yaml").read_text())["blocks"]["shape"]
    modes = [("local", [], {}), ("local, one block per job", [], {"per_job": [1, 1, 1]})]
    if slurm_has_groups():
        modes.append(("slurm profile (grouped)", ["--profile", str(ROOT / "profiles" / "slurm")], {}))
    # --merge: rows of the previous results stand for the cases not selected by --blocks / --modes
    previous = json.loads((RESULTS / "plan_scale.json").read_text())["rows"] if args.merge else []
    selected = lambda r: r["blocks"] in args.blocks and (not args.modes or r["mode"] in args.modes)  # noqa: E731
    kept = {(r["blocks"], r["mode"]): r for r in previous if not selected(r)}
    blocks_run = sorted(set(args.blocks) | {b for b, _ in kept})
    rows = []
    for n in blocks_run:
        grid = grid_for(n)
        with tempfile.TemporaryDirectory(prefix="cmx_plan_") as tmp:
            for i, (mode, extra, blocks) in enumerate(modes):
                if (n, mode) in kept:
                    rows.append(kept[(n, mode)])
                    continue
                if not selected({"blocks": n, "mode": mode}):
                    continue
                config = make_case(Path(tmp) / f"mode{i}", grid, block_shape, blocks)
                print(f"== {n} blocks {grid}, {mode}", flush=True)
                skip = None if args.force else _predicted_too_long([r for r in rows if r["mode"] == mode], grid,
                                                                      blocks, args.limit)
                result = skip or run_dry(config, extra, args.limit)
                row = {"blocks": n, "grid": list(grid), "volume_shape": [g * b for g, b in zip(grid, block_shape)],
                       "block_shape": block_shape, "mode": mode, "blocks_config": blocks, **result}
                print(f"   {json.dumps({k: v for k, v in row.items() if k not in ('jobs_per_rule', 'stderr_tail')})}",
                      flush=True)
                rows.append(row)
    finished = [r for r in rows if r["status"] == "ok"]
    if args.profile_dir and finished:
        local = [r for r in finished if r["mode"].startswith("local")] or finished
        largest = max(local, key=lambda r: (r["blocks"], r["mode"] == "local"))
        args.profile_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="cmx_plan_") as tmp:
            config = make_case(Path(tmp) / "case", tuple(largest["grid"]), block_shape, largest.get("blocks_config"))
            prof = args.profile_dir / f"plan_{largest['blocks']}.prof"
            run_dry(config, [], args.limit * 2, profile_out=prof)
            print(f"cProfile: {prof}")

    scaling = {mode: _scaling([r for r in finished if r["mode"] == mode]) for mode, _, _ in modes}
    scaling = {mode: value for mode, value in scaling.items() if value}
    payload = {
        "rows": rows,
        "scaling": scaling,
        "goal": {"blocks": 10_000, "seconds": GOAL_SECONDS[10_000]},
        "meta": {
            "snakemake": _snakemake_version(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
            "slurm_profile_has_groups": slurm_has_groups(),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "plan_scale.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "plan_scale.md").write_text(_table(payload))
    print((RESULTS / "plan_scale.md").read_text())
    return 0


def _scaling(rows: list[dict]) -> dict:
    """Exponent b of wall ~ blocks^b between consecutive finished cases (1 = linear)."""
    rows = sorted(rows, key=lambda r: r["blocks"])
    out = {}
    for a, b in zip(rows, rows[1:]):
        if a["wall_s"] > 0 and b["blocks"] > a["blocks"]:
            out[f"{a['blocks']}->{b['blocks']}"] = round(
                math.log(b["wall_s"] / a["wall_s"]) / math.log(b["blocks"] / a["blocks"]), 2)
    return out


def _snakemake_version() -> str:
    try:
        return subprocess.run([SNAKEMAKE, "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def _table(payload: dict) -> str:
    meta = payload["meta"]
    lines = [
        "# Planning scale (`snakemake -n`)",
        "",
        f"`python benchmarks/plan_scale.py`. Snakemake {meta['snakemake']}, Python {meta['python']}, "
        f"{meta['cpu_count']} CPU cores (shared), {meta['date']}. One ingest dataset (metadata-only zarr source) "
        "with the default block shape; wall time, CPU time (user + system) and peak RSS of the whole snakemake "
        "process. On this shared machine wall time includes waiting for a core; CPU time does not. "
        f"Goal: <= {payload['goal']['seconds']:.0f} s for {payload['goal']['blocks']} blocks.",
        "",
        "| blocks | grid (z, y, x) | volume (voxels) | mode | jobs per blockwise step | jobs | wall s | CPU s "
        "| peak RSS MB | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        per_step = (r.get("jobs_per_rule") or {}).get("predict_block", "-")
        lines.append(
            f"| {r['blocks']} | {tuple(r['grid'])} | {tuple(r['volume_shape'])} | {r['mode']} | {per_step} "
            f"| {r.get('jobs', '-')} | {r['wall_s'] if r['wall_s'] is not None else '-'} | {r.get('cpu_s', '-')} "
            f"| {r.get('peak_rss_mb', '-')} | {r['status']}" + (f": {r['why']}" if r.get("why") else "") + " |"
        )
    for mode, scaling in payload["scaling"].items():
        lines += ["", f"Scaling exponent b (wall ~ blocks^b), {mode}: "
                  + ", ".join(f"{k}: {v}" for k, v in scaling.items())]
    if not payload["meta"]["slurm_profile_has_groups"]:
        lines += ["", "profiles/slurm has no `groups:`; its dry run plans the same DAG as the local one."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
