"""``connectomix plan``: jobs, CPU core-hours, GPU-hours and storage per stage for a volume, before anything runs.

    python -m connectomix plan --shape 25000 125000 125000 --voxel-size 40 8 8
    python -m connectomix plan --size-um 1000 1000 1000 --voxel-size 40 8 8 --json plan.json
    python -m connectomix plan --refresh-rates benchmarks/results --measure-storage results/phantom

Job counts come from the block grid every blockwise stage uses (connectomix.blocks.BlockGrid) and its batches
(one job per brick of blocks, blocks.per_job / blocks.max_jobs: connectomix.blocks.BlockBatches); hours are
voxels / rate, with per-voxel rates measured by the benchmarks and kept, with their sources, in the versioned file
``connectomix/data/rates.yaml`` (docs/plan.md). A step without a measured rate is shown as ``n/a`` with the
reason and is left out of the totals (which are then lower bounds, and say so); nothing is extrapolated from
another step. Storage is bytes per voxel per array (dtype x channels, the multiscale pyramid included) and, where
a run measured it, the bytes on disk per voxel after compression. Published figures for the MICrONS cubic
millimetre are printed next to the estimate, with their citations.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import yaml

from connectomix.blocks import BlockBatches, BlockGrid, batch_shape_for

RATES_FORMAT = 1


@dataclass(frozen=True)
class Step:
    """One rule of the workflow as the planner counts it."""

    stage: str
    step: str
    rule: str
    scope: str  # "block": one job per block; "dataset": one job per dataset (a serial, whole-volume step)

    @property
    def key(self) -> str:
        return f"{self.stage}.{self.step}"


# The jobs `snakemake` schedules for one source dataset (rules/*.smk), in workflow order. Phantom datasets replace
# ingest by phantom (--source phantom). Evaluation, co-registration and analysis run only with ground truth or
# two-photon data and are not planned here.
STEPS: tuple[Step, ...] = (
    Step("ingest", "ingest", "ingest", "dataset"),
    Step("predict", "setup", "predict_setup", "dataset"),
    Step("predict", "block", "predict_block", "block"),
    Step("predict", "finish", "predict_finish", "dataset"),
    Step("segment", "setup", "segment_setup", "dataset"),
    Step("segment", "fragments", "segment_fragments", "block"),
    Step("segment", "rag", "segment_rag", "block"),
    Step("segment", "agglomerate", "segment_agglomerate", "dataset"),
    Step("segment", "relabel", "segment_relabel", "block"),
    Step("segment", "finish", "segment_finish", "dataset"),
    Step("skeletonize", "somata", "skeletonize_somata", "dataset"),
    Step("skeletonize", "block", "skeletonize_block", "block"),
    Step("skeletonize", "merge", "skeletonize_merge", "dataset"),
    Step("skeletonize", "morphology", "skeletonize_morphology", "dataset"),
    Step("synapses", "setup", "synapses_setup", "dataset"),
    Step("synapses", "block", "synapses_block", "block"),
    Step("synapses", "stitch", "synapses_stitch", "dataset"),
    Step("connectome", "build", "connectome", "dataset"),
    Step("connectome", "export", "export_connectome", "dataset"),
    Step("export", "precomputed", "export_precomputed_segmentation", "dataset"),
    Step("export", "skeletons", "export_skeletons", "dataset"),
    Step("export", "neuroglancer", "export_neuroglancer_state", "dataset"),
)
PHANTOM_STEP = Step("phantom", "generate", "phantom", "dataset")


# --------------------------------------------------------------------------------------------------- rates file


def default_rates_path() -> Path:
    return Path(str(resources.files("connectomix").joinpath("data", "rates.yaml")))


def load_rates(path: str | Path | None = None) -> dict:
    """The rates file, checked: every planned step present, every rate a positive number or null with a reason."""
    path = Path(path) if path else default_rates_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: rates file does not exist")
    rates = yaml.safe_load(path.read_text()) or {}
    if not isinstance(rates, dict) or "steps" not in rates:
        raise ValueError(f"{path}: not a rates file (no 'steps' mapping); see docs/plan.md")
    for key in ("version", "measured_on"):
        if key not in rates:
            raise ValueError(f"{path}: rates file lacks '{key}'")
    for step in (*STEPS, PHANTOM_STEP):
        _check_rate(path, rates["steps"], step.key)
    return rates


def _check_rate(path: Path, steps: dict, key: str) -> None:
    entry = steps.get(key)
    if entry is None:
        raise ValueError(
            f"{path}: no rate for step '{key}' (add steps.{key} with cpu_voxels_per_core_second: <number>, "
            f"or null and a 'reason' saying why it is not measured)"
        )
    fields = ["cpu_voxels_per_core_second"] + (["gpu_voxels_per_second"] if entry.get("uses_gpu") else [])
    for field in fields:
        if field not in entry:
            raise ValueError(f"{path}: steps.{key} lacks '{field}' (a number, or null with a reason)")
        value = entry[field]
        if value is None:
            reason_key = "reason" if field.startswith("cpu") else "gpu_reason"
            if not entry.get(reason_key):
                raise ValueError(f"{path}: steps.{key}.{field} is null but steps.{key}.{reason_key} is missing")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{path}: steps.{key}.{field} must be a positive number of voxels per second, "
                             f"got {value!r}")
        if entry.get("source") in (None, ""):
            raise ValueError(f"{path}: steps.{key}.{field} = {value} has no 'source' (the benchmark file it comes from)")


# --------------------------------------------------------------------------------------------------- the plan


def _positive_triple(values, name: str, kind=int) -> tuple:
    if values is None or len(values) != 3:
        raise ValueError(f"{name} needs 3 values (z, y, x), got {values!r}")
    out = []
    for v in values:
        try:
            number = kind(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numbers (z, y, x), got {values!r}") from None
        if kind is int and number != float(v):
            raise ValueError(f"{name} must be whole numbers (z, y, x), got {values!r}")
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"{name} must be positive (z, y, x), got {list(values)!r}: {v!r} is not > 0")
        out.append(number)
    return tuple(out)


def shape_from_size(size_um, voxel_size_nm) -> tuple[int, int, int]:
    """Voxels (z, y, x) covering a physical extent in µm at a voxel size in nm (rounded up)."""
    size = _positive_triple(size_um, "--size-um", float)
    voxel = _positive_triple(voxel_size_nm, "--voxel-size", float)
    return tuple(math.ceil(round(s * 1000.0 / v, 6)) for s, v in zip(size, voxel))  # type: ignore[return-value]


def _pyramid_factor(levels: int, factor) -> float:
    """Voxels of all pyramid levels over level 0 (levels downsampled by `factor` each)."""
    per_level = 1.0 / (factor[0] * factor[1] * factor[2])
    return sum(per_level**i for i in range(levels))


def read_per_write(block_shape, halo) -> float:
    """Voxels a block reads (its write ROI grown by ``halo`` on every side) per voxel it owns, in a volume large
    against its blocks (read ROIs clipped at the volume's faces are neglected)."""
    return math.prod((b + 2 * h) / b for b, h in zip(block_shape, halo))


def make_plan(
    shape,
    voxel_size,
    block_shape=None,
    chunk_shape=None,
    pyramid=None,
    rates: dict | None = None,
    source: str = "ingest",
    per_job="auto",
    max_jobs: int | None = None,
    predict_passes: int = 1,
) -> dict:
    """The plan as a dict: volume, grid, per-step jobs/hours, per-array storage, totals, references.
    ``predict_passes``: network passes per tile (test-time augmentation, ``predict.augment``), which divide the
    predict block rates (measured with one)."""
    from connectomix import config as cmx_config

    defaults = cmx_config.validate({"datasets": {"d": {"voxel_size": [40, 8, 8], "phantom": {}}}})
    shape = _positive_triple(shape, "--shape")
    voxel_size = _positive_triple(voxel_size, "--voxel-size", float)
    block_shape = _positive_triple(block_shape or defaults["blocks"]["shape"], "--block-shape")
    chunk_shape = _positive_triple(chunk_shape or defaults["storage"]["chunk_shape"], "--chunk-shape")
    pyramid = pyramid or defaults["pyramid"]
    rates = rates if rates is not None else load_rates()
    grid = BlockGrid(shape, block_shape, chunk_shape=chunk_shape)
    n_blocks = len(grid)
    if per_job != "auto":
        per_job = _positive_triple(per_job, "--per-job")
    max_jobs = int(max_jobs if max_jobs is not None else defaults["blocks"]["max_jobs"])
    if max_jobs < 1:
        raise ValueError(f"--max-jobs must be >= 1, got {max_jobs}")
    batches = BlockBatches(grid.grid_shape, batch_shape_for(grid.grid_shape, per_job, max_jobs))
    n_batches = len(batches)
    voxels = shape[0] * shape[1] * shape[2]

    steps = [PHANTOM_STEP if (s.stage == "ingest" and source == "phantom") else s for s in STEPS]
    rows = []
    for step in steps:
        entry = rates["steps"][step.key]
        jobs = n_batches if step.scope == "block" else 1
        cpu_rate = entry["cpu_voxels_per_core_second"]
        halo_scale = None
        if cpu_rate and entry.get("read_per_write_voxel") and entry.get("halo"):
            halo_scale = read_per_write(block_shape, entry["halo"]) / entry["read_per_write_voxel"]
            cpu_rate = cpu_rate / halo_scale
        gpu_rate = entry.get("gpu_voxels_per_second")
        passes = int(predict_passes) if step.key == "predict.block" else 1
        if passes > 1:
            cpu_rate = cpu_rate / passes if cpu_rate else cpu_rate
            gpu_rate = gpu_rate / passes if gpu_rate else gpu_rate
        row = {
            "stage": step.stage,
            "step": step.step,
            "rule": step.rule,
            "scope": step.scope,
            "jobs": jobs,
            "cpu_core_hours": voxels / cpu_rate / 3600 if cpu_rate else None,
            "gpu_hours": voxels / gpu_rate / 3600 if gpu_rate else None,
            "cpu_rate": cpu_rate,
            "gpu_rate": gpu_rate,
            "source": entry.get("source"),
            "reason": None if cpu_rate else entry.get("reason"),
            "uses_gpu": bool(entry.get("uses_gpu")),
            "gpu_reason": None if gpu_rate else entry.get("gpu_reason"),
            "halo_scale": halo_scale,
            "passes": passes,
        }
        low_high = entry.get("cpu_range")
        if cpu_rate and low_high:
            # a lower rate means more hours: (hours at the highest rate, hours at the lowest rate)
            row["cpu_core_hours_range"] = [voxels / max(low_high) / 3600, voxels / min(low_high) / 3600]
        if step.scope == "block" and cpu_rate:
            # the largest job: a full brick of blocks, one core (threads aside)
            brick = math.prod(batches.batch_shape) * math.prod(block_shape)
            row["cpu_core_hours_largest_job"] = min(brick, voxels) / cpu_rate / 3600
        if step.scope == "dataset" and cpu_rate:
            cores = entry.get("cores_per_job", 1)
            row["serial_wall_hours"] = row["cpu_core_hours"] / cores
        rows.append(row)

    storage = _storage(rates, voxels, pyramid, source)
    measured = [r for r in rows if r["cpu_core_hours"] is not None]
    totals = {
        "jobs": sum(r["jobs"] for r in rows) + 1,  # + the `all` target
        "cpu_core_hours_measured_steps": sum(r["cpu_core_hours"] for r in measured),
        "gpu_hours_measured_steps": sum(r["gpu_hours"] for r in rows if r["gpu_hours"] is not None),
        "steps_without_cpu_rate": [f"{r['stage']}.{r['step']}" for r in rows if r["cpu_core_hours"] is None],
        "steps_without_gpu_rate": [f"{r['stage']}.{r['step']}" for r in rows if r["uses_gpu"] and r["gpu_hours"] is None],
        "serial_wall_hours_measured": sum(r.get("serial_wall_hours", 0.0) for r in rows),
        "storage_bytes_uncompressed": sum(a["bytes_uncompressed"] for a in storage if a["bytes_uncompressed"]),
        "storage_bytes_on_disk_estimate": sum(a["bytes_on_disk"] for a in storage if a["bytes_on_disk"]),
    }
    plan = {
        "volume": {
            "shape": list(shape),
            "voxel_size_nm": list(voxel_size),
            "voxels": voxels,
            "extent_um": [s * v / 1000 for s, v in zip(shape, voxel_size)],
            "volume_mm3": voxels * voxel_size[0] * voxel_size[1] * voxel_size[2] / 1e18,
        },
        "grid": {"block_shape": list(block_shape), "chunk_shape": list(chunk_shape),
                 "grid_shape": list(grid.grid_shape), "blocks": n_blocks,
                 "per_job": per_job if per_job == "auto" else list(per_job), "max_jobs": max_jobs,
                 "blocks_per_job": list(batches.batch_shape), "jobs_per_step": n_batches},
        "pyramid": pyramid,
        "steps": rows,
        "storage": storage,
        "totals": totals,
        "planning": _planning(rates, totals["jobs"]),
        "storage_note": rates.get("storage_note"),
        "rates": {"version": rates["version"], "measured_on": rates["measured_on"]},
        "references": _references(rates, plan_voxels=voxels, voxel_size=voxel_size, storage=storage),
    }
    return plan


def _storage(rates: dict, voxels: int, pyramid: dict, source: str) -> list[dict]:
    levels_factor = _pyramid_factor(int(pyramid["levels"]), pyramid["factor"])
    out = []
    for name, spec in rates.get("storage", {}).items():
        if spec.get("phantom_only") and source != "phantom":
            continue
        multiplier = levels_factor if spec.get("pyramid") else 1.0
        bpv = spec.get("bytes_per_voxel")
        disk = spec.get("disk_bytes_per_voxel")
        out.append({
            "array": name,
            "stage": spec.get("stage"),
            "what": spec.get("what", ""),
            "bytes_per_voxel": bpv,
            "levels_factor": multiplier,
            "bytes_uncompressed": voxels * bpv * multiplier if bpv else None,
            "disk_bytes_per_voxel": disk,
            "bytes_on_disk": voxels * disk if disk else None,
            "disk_source": spec.get("disk_source"),
            "note": spec.get("note"),
        })
    return out


def _planning(rates: dict, jobs: int) -> dict | None:
    """`snakemake -n` time and memory for this many jobs, from the plan_scale benchmark's linear fit."""
    fit = rates.get("planning")
    if not fit or fit.get("seconds_per_job") is None:
        return None
    seconds = fit["seconds_fixed"] + fit["seconds_per_job"] * jobs
    memory_mb = fit["rss_mb_fixed"] + fit["rss_mb_per_job"] * jobs
    return {
        "jobs": jobs,
        "dry_run_seconds": seconds,
        "dry_run_peak_rss_mb": memory_mb,
        "extrapolated": jobs > fit.get("max_jobs_measured", 0),
        "max_jobs_measured": fit.get("max_jobs_measured"),
        "source": fit.get("source"),
        "note": fit.get("note"),
    }


def _references(rates: dict, plan_voxels: int, voxel_size, storage: list[dict]) -> list[dict]:
    """Published figures, each with what this plan says for the same quantity where the rates allow it."""
    out = []
    raw = next((a for a in storage if a["array"] == "raw"), None)
    for ref in rates.get("references", []):
        item = {k: ref.get(k) for k in ("id", "citation", "url", "figures", "note")}
        compare = ref.get("compare")
        if compare:
            ours = None
            quantity = compare["quantity"]
            # the reference's own voxel size where it states one (e.g. images as acquired), else the plan's
            at = compare.get("voxel_size_nm") or voxel_size
            vol_voxels = compare["volume_nm3"] / (at[0] * at[1] * at[2])
            if quantity == "raw_bytes" and raw and raw["bytes_per_voxel"]:
                ours = vol_voxels * raw["bytes_per_voxel"]
                item["ours_note"] = (f"raw uint8, level 0 only, same {compare['volume_nm3'] / 1e18:g} mm3 at "
                                     f"{_zyx(at)} nm" + (" (their voxel size)" if compare.get("voxel_size_nm") else ""))
            elif quantity == "cpu_core_hours":
                rate = rates["steps"][compare["step"]]["cpu_voxels_per_core_second"]
                voxels = compare.get("voxels") or vol_voxels
                if rate:
                    ours = voxels / rate / 3600
                    item["ours_note"] = f"{compare['step']} at our measured rate, same {voxels:.3g} voxels"
                else:
                    item["ours_note"] = f"{compare['step']}: not measured, no comparison"
            item["theirs"] = {"quantity": quantity, "value": compare["value"], "how": compare.get("how")}
            item["ours"] = ours
        out.append(item)
    return out


# --------------------------------------------------------------------------------------------------- printing


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return f"0{unit}"
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _hours(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _zyx(values) -> str:
    return " x ".join(f"{v:g}" for v in values)


def _per_job(value) -> str:
    return value if value == "auto" else f"[{', '.join(str(v) for v in value)}]"


def render(plan: dict) -> str:
    vol, grid, totals = plan["volume"], plan["grid"], plan["totals"]
    rates = plan["rates"]
    lines = [
        f"Volume: {_zyx(vol['shape'])} voxels (z, y, x) at {_zyx(vol['voxel_size_nm'])} nm = "
        f"{_zyx(round(e, 3) for e in vol['extent_um'])} um = {vol['volume_mm3']:.4g} mm3, "
        f"{vol['voxels']:.4g} voxels ({_si(vol['voxels'], 'voxels')})",
        f"Blocks: {_zyx(grid['block_shape'])} voxels -> grid {_zyx(grid['grid_shape'])} = {grid['blocks']:,} blocks "
        f"(chunks {_zyx(grid['chunk_shape'])})",
        f"Jobs per blockwise step: {grid['jobs_per_step']:,}, each a brick of {_zyx(grid['blocks_per_job'])} = "
        f"{math.prod(grid['blocks_per_job']):,} blocks (blocks.per_job {_per_job(grid['per_job'])}"
        + (f", max_jobs {grid['max_jobs']:,}" if grid["per_job"] == "auto" else "") + ")",
        f"Rates: version {rates['version']}, measured on {rates['measured_on'].get('machine')} "
        f"({rates['measured_on'].get('date')}); CPU rates are voxels/s per core",
        "",
        f"{'stage':<12} {'step':<12} {'scope':<8} {'jobs':>14} {'CPU core-h':>14} {'core-h/job':>10} {'GPU-h':>10}  "
        "rate source / why n/a",
    ]
    for r in plan["steps"]:
        cpu = _hours(r["cpu_core_hours"])
        if r.get("cpu_core_hours_range"):
            lo, hi = r["cpu_core_hours_range"]
            cpu = f"{cpu}"
            why = f"{r['source']} (range {_hours(lo)}-{_hours(hi)} core-h)"
        else:
            why = r["source"] if r["cpu_core_hours"] is not None else f"not measured: {r['reason']}"
        if r.get("passes", 1) > 1:
            why += f" (x{r['passes']}: predict.augment's passes per tile)"
        if r.get("halo_scale"):
            why += (f" (x{r['halo_scale']:.2f} for the halo: voxels read per voxel owned, these blocks vs the "
                    "benchmark's)")
        gpu = _hours(r["gpu_hours"]) if r["gpu_hours"] is not None else ("n/a" if r["uses_gpu"] else "-")
        scope = "block" if r["scope"] == "block" else "serial"
        per_job = r.get("cpu_core_hours_largest_job") if r["scope"] == "block" else r["cpu_core_hours"]
        per_job = _hours(per_job) if per_job is not None else "n/a"
        lines.append(f"{r['stage']:<12} {r['step']:<12} {scope:<8} {r['jobs']:>14,} {cpu:>14} {per_job:>10} {gpu:>10}  "
                     f"{why}")
    lines.append(f"{'':<12} core-h/job: the largest job on one core; a blockwise job runs its blocks one after "
                 "another (more jobs, shorter: --max-jobs / blocks.max_jobs)")
    gpu_missing = [r for r in plan["steps"] if r["gpu_hours"] is None and r["uses_gpu"]]
    for r in gpu_missing:
        lines.append(f"{'':<12} GPU-h n/a for {r['stage']}.{r['step']}: {r['gpu_reason']}")
    lines += [
        "",
        f"Jobs: {totals['jobs']:,} (the `all` target included).",
        f"CPU core-hours (measured steps only, a lower bound): {_hours(totals['cpu_core_hours_measured_steps'])}; "
        f"not measured: {', '.join(totals['steps_without_cpu_rate']) or 'none'}.",
        f"GPU-hours: {_hours(totals['gpu_hours_measured_steps']) if totals['gpu_hours_measured_steps'] else 'n/a'}"
        f"{' (no GPU rate measured for ' + ', '.join(totals['steps_without_gpu_rate']) + ')' if totals['steps_without_gpu_rate'] else ''}.",
        f"Serial steps (one job for the whole volume, cannot use more machines): "
        f"{_hours(totals['serial_wall_hours_measured'])} wall-hours for the measured ones.",
    ]
    serial = [r for r in plan["steps"] if r.get("serial_wall_hours")]
    for r in serial:
        lines.append(f"  {r['stage']}.{r['step']}: {_hours(r['serial_wall_hours'])} h in one job")
    planning = plan.get("planning")
    if planning:
        lines.append(
            f"Snakemake dry run for {planning['jobs']:,} jobs: ~{_duration(planning['dry_run_seconds'])}, "
            f"~{_si(planning['dry_run_peak_rss_mb'] * 1e6, 'B')} peak memory"
            + (f" (extrapolated far beyond the {planning['max_jobs_measured']:,} jobs measured)"
               if planning["extrapolated"] else "")
            + f" [{planning['source']}]"
        )
    lines += ["", f"{'array':<24} {'stage':<12} {'B/voxel':>8} {'levels x':>8} {'uncompressed':>13} "
                  f"{'on disk (est.)':>15}  what / measured on"]
    for a in plan["storage"]:
        bpv = f"{a['bytes_per_voxel']:g}" if a["bytes_per_voxel"] else "-"
        disk_note = a["disk_source"] or ("not measured: uncompressed size only" if a["bytes_per_voxel"] else "")
        lines.append(
            f"{a['array']:<24} {a['stage'] or '':<12} {bpv:>8} {a['levels_factor']:>8.4g} "
            f"{_si(a['bytes_uncompressed'], 'B'):>13} {_si(a['bytes_on_disk'], 'B'):>15}  {a['what']}"
            + (f" [{disk_note}]" if disk_note else "")
        )
    lines.append(
        f"{'total':<24} {'':<12} {'':>8} {'':>8} {_si(totals['storage_bytes_uncompressed'], 'B'):>13} "
        f"{_si(totals['storage_bytes_on_disk_estimate'], 'B'):>15}  (on disk: arrays with a measured ratio only)"
    )
    if plan.get("storage_note"):
        lines.append(f"Storage note: {plan['storage_note']}")
    lines += ["", "Published figures (MICrONS cubic millimetre):"]
    for ref in plan["references"]:
        lines.append(f"- {ref['citation']}")
        if ref.get("url"):
            lines.append(f"  {ref['url']}")
        for fig in ref.get("figures") or []:
            lines.append(f"  * {fig}")
        if ref.get("theirs"):
            theirs = ref["theirs"]
            unit = "B" if theirs["quantity"].endswith("bytes") else " core-h"
            their_value = _si(theirs["value"], "B") if unit == "B" else f"{theirs['value']:,.0f}{unit}"
            ours = ref.get("ours")
            our_value = "n/a" if ours is None else (_si(ours, "B") if unit == "B" else f"{ours:,.0f}{unit}")
            lines.append(f"  compare: theirs {their_value} ({theirs.get('how') or theirs['quantity']}); "
                         f"ours {our_value} ({ref.get('ours_note', '')})")
        if ref.get("note"):
            lines.append(f"  note: {ref['note']}")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


# --------------------------------------------------------------------------------------------------- refreshing


def _closest(rows, key, target):
    """The row whose `key` (a shape) has the volume closest to `target`'s, in log terms."""
    size = math.prod(target)
    return min(rows, key=lambda r: abs(math.log(math.prod(r[key]) / size)))


def derive_rates(bench_dir: Path, defaults: dict) -> dict:
    """steps.* entries derivable from the benchmark results in bench_dir (only those whose file exists)."""
    out: dict[str, dict] = {}
    bench_dir = Path(bench_dir)

    def rel(name):
        return f"benchmarks/results/{name}"

    path = bench_dir / "predict_throughput.json"
    if path.exists():
        data = json.loads(path.read_text())
        threads = int(data.get("threads") or 1)
        tile = defaults["predict"]["tile_shape"]
        row = _closest(data["rows"], "tile_output", tile)
        per_core = [r["pipeline_voxels_per_s"] / threads for r in data["rows"]]
        out["predict.block"] = {
            "cpu_voxels_per_core_second": round(row["pipeline_voxels_per_s"] / threads),
            "cpu_range": [round(min(per_core)), round(max(per_core))],
            "source": rel(path.name),
            "derivation": (f"pipeline_voxels_per_s of the measured output tile closest to the default "
                           f"predict.tile_shape {tile} (tile {row['tile_output']}) / {threads} threads; range over "
                           f"all {len(data['rows'])} measured tiles (the machine is shared: timings are noisy)"),
            "uses_gpu": True,
        }
    path = bench_dir / "segment_throughput.json"
    if path.exists():
        data = json.loads(path.read_text())["rows"]
        row = _closest(data, "block_shape", defaults["blocks"]["shape"])
        per_run = [r["voxels"] / r["connectomix_seconds"] for r in data]
        scopes = {"fragments": "block", "rag": "block", "relabel": "block", "agglomerate": "dataset",
                  "finish": "dataset"}
        for step in scopes:
            seconds = row["step_seconds"][step]
            out[f"segment.{step}"] = {
                "cpu_voxels_per_core_second": round(row["voxels"] / seconds),
                "source": rel(path.name),
                "derivation": (f"{row['dataset']}: voxels {row['voxels']} / step_seconds.{step} {seconds:.3f} s, "
                               f"one process (1 core), blocks {row['block_shape']} (the measured block shape "
                               f"closest to the default); whole stage {row['voxels'] / row['connectomix_seconds']:.3g}"
                               f" voxels/s, {min(per_run):.3g}-{max(per_run):.3g} over the {len(data)} datasets"),
            }
    path = bench_dir / "phantom_speed.json"
    if path.exists():
        data = json.loads(path.read_text())
        threads = int(data.get("meta", {}).get("omp_num_threads") or 1)
        row = max(data["rows"], key=lambda r: math.prod(r["shape"]))
        out["phantom.generate"] = {
            "cpu_voxels_per_core_second": round(row["mvoxels_per_second"] * 1e6 / threads),
            "source": rel(path.name),
            "derivation": f"largest case {row['case']}: {row['mvoxels_per_second']} Mvoxel/s / OMP_NUM_THREADS={threads}",
        }
    path = bench_dir / "skeletonize_throughput.json"
    if path.exists():
        data = json.loads(path.read_text())
        largest = max(math.prod(r["shape"]) for r in data["rows"])
        # the largest volume, at the benchmark's default (config.yaml's) block shape when it has several
        rows = [r for r in data["rows"] if math.prod(r["shape"]) == largest]
        row = next((r for r in rows if r.get("block_shape") == data.get("block")), rows[0])
        voxels = math.prod(row["shape"])
        workers = int(row.get("workers") or 1)
        out["skeletonize.block"] = {
            "cpu_voxels_per_core_second": round(voxels / (row["blocks_s"] * workers)),
            "source": rel(path.name),
            "derivation": f"{row['volume']}: {voxels} voxels / (blocks_s {row['blocks_s']} s x {workers} workers)",
        }
        if row.get("read_per_write_voxel"):  # the block time follows the voxels read: plan scales by the halo
            out["skeletonize.block"].update(halo=list(row["halo"]), read_per_write_voxel=row["read_per_write_voxel"])
        out["skeletonize.merge"] = {
            "cpu_voxels_per_core_second": round(voxels / row["merge_s"]),
            "source": rel(path.name),
            "derivation": f"{row['volume']}: {voxels} voxels / merge_s {row['merge_s']} s (one process)",
        }
    path = bench_dir / "plan_scale.json"
    if path.exists():
        data = json.loads(path.read_text())
        rows = [r for r in data["rows"]
                if r.get("status") == "ok" and str(r.get("mode", "")).startswith("local") and r.get("jobs")]
        if len({r["jobs"] for r in rows}) >= 2:
            # CPU seconds where recorded: wall time on a shared machine includes waiting for a core
            seconds = [r.get("cpu_s", r["wall_s"]) for r in rows]
            fit_s = _linear_fit([r["jobs"] for r in rows], seconds)
            fit_m = _linear_fit([r["jobs"] for r in rows], [r["peak_rss_mb"] for r in rows])
            out["__planning__"] = {
                "seconds_fixed": round(fit_s[0], 2), "seconds_per_job": round(fit_s[1], 6),
                "rss_mb_fixed": round(fit_m[0], 1), "rss_mb_per_job": round(fit_m[1], 5),
                "max_jobs_measured": max(r["jobs"] for r in rows),
                "source": rel(path.name),
                "note": "least-squares line through the local (ungrouped) dry runs, CPU seconds (user + system) "
                        "against jobs; job grouping (profiles/slurm groups) is slower, see "
                        "benchmarks/results/plan_scale.md",
            }
    return out


def _linear_fit(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def measure_storage(dataset_dir: Path) -> dict:
    """Bytes on disk per level-0 voxel of each array (all pyramid levels) and work folder of a finished run."""
    import zarr

    dataset_dir = Path(dataset_dir)
    volume = dataset_dir / "volume.zarr"
    root = zarr.open_group(str(volume), mode="r")
    voxels = math.prod(root["raw"]["0"].shape)

    def disk(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else (
            path.stat().st_size if path.exists() else 0)

    out = {}
    for name in ("raw", "affinities", "synapse_maps", "fragments", "segmentation", "cleft_fragments", "clefts"):
        if (volume / name).exists():
            out[name] = disk(volume / name) / voxels
    extra = {"segment_edges": dataset_dir / "segment" / "edges", "segment_graph": dataset_dir / "segment" / "graph.npz",
             "segment_faces": dataset_dir / "segment" / "faces", "skeleton_pieces": dataset_dir / "skeletonize",
             "precomputed_segmentation": dataset_dir / "precomputed" / "segmentation"}
    for name, path in extra.items():
        if path.exists():
            out[name] = disk(path) / voxels
    return {"voxels": voxels, "disk_bytes_per_voxel": out}


def refresh_rates(rates_path: Path, bench_dir: Path | None, dataset_dir: Path | None, out_path: Path) -> dict:
    """Rewrite the rates file with rates re-derived from benchmark results (and storage from a finished run).

    Hand-written parts (references, reasons, storage dtypes) are kept; the version goes up by one when a number
    changes. Returns the new content.
    """
    from connectomix import config as cmx_config

    rates = yaml.safe_load(Path(rates_path).read_text())
    before = json.dumps(rates, sort_keys=True)
    defaults = cmx_config.validate({"datasets": {"d": {"voxel_size": [40, 8, 8], "phantom": {}}}})
    if bench_dir is not None:
        derived = derive_rates(bench_dir, defaults)
        planning = derived.pop("__planning__", None)
        if planning:
            rates["planning"] = planning
        for key, entry in derived.items():
            current = rates["steps"].setdefault(key, {})
            current.update(entry)
            current.pop("reason", None)
            if current.get("uses_gpu") and current.get("gpu_voxels_per_second") is None:
                current["gpu_voxels_per_second"] = None
                current.setdefault("gpu_reason", "no GPU benchmark")
    if dataset_dir is not None:
        measured = measure_storage(dataset_dir)
        stamp = datetime.fromtimestamp(Path(dataset_dir).stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%d")
        for name, bpv in measured["disk_bytes_per_voxel"].items():
            spec = rates.setdefault("storage", {}).get(name)
            if spec is None or spec.get("disk_measured") is False:
                continue
            spec["disk_bytes_per_voxel"] = round(bpv, 4)
            spec["disk_source"] = f"measured on {dataset_dir}, {measured['voxels']} voxels, {stamp}"
    if json.dumps(rates, sort_keys=True) != before:
        rates["version"] = int(rates.get("version", 0)) + 1
        rates["measured_on"]["refreshed"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    header = ("# Per-voxel rates and storage for `connectomix plan` (docs/plan.md). Written by\n"
              "# `python -m connectomix plan --refresh-rates benchmarks/results [--measure-storage results/DATASET]`;\n"
              "# hand edits to references, reasons and storage dtypes are kept by a refresh.\n")
    Path(out_path).write_text(header + yaml.safe_dump(rates, sort_keys=False, width=110, allow_unicode=True))
    return rates


# --------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--shape", nargs=3, type=float, metavar=("Z", "Y", "X"), help="volume shape in voxels")
    size.add_argument("--size-um", nargs=3, type=float, metavar=("Z", "Y", "X"),
                      help="physical extent in micrometres (voxels = extent / voxel size, rounded up)")
    parser.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"), default=None,
                        help="voxel size in nm (z, y, x); required with --shape/--size-um")
    parser.add_argument("--block-shape", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        help="block shape in voxels (default: blocks.shape of --config, else the schema default)")
    parser.add_argument("--chunk-shape", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        help="storage chunk shape (default: storage.chunk_shape of --config / the schema default)")
    parser.add_argument("--per-job", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        help="blocks per job of a blockwise step, a (z, y, x) brick (default: blocks.per_job of "
                             "--config, else auto)")
    parser.add_argument("--max-jobs", type=int,
                        help="with per-job auto: the most jobs per blockwise step (default: blocks.max_jobs of "
                             "--config, else the schema default)")
    parser.add_argument("--config", type=Path, help="a connectomix config: blocks, storage and pyramid settings")
    parser.add_argument("--source", choices=["ingest", "phantom"], default="ingest",
                        help="first stage: ingest real sections (default) or generate a phantom")
    parser.add_argument("--rates", type=Path, help="rates file (default: the shipped connectomix/data/rates.yaml)")
    parser.add_argument("--json", type=Path, help="also write the plan as JSON here")
    parser.add_argument("--refresh-rates", type=Path, metavar="BENCH_DIR",
                        help="re-derive the rates from benchmark results in BENCH_DIR (e.g. benchmarks/results)")
    parser.add_argument("--measure-storage", type=Path, metavar="DATASET_DIR",
                        help="with --refresh-rates: bytes on disk per voxel from a finished run, e.g. results/phantom")
    parser.add_argument("--rates-out", type=Path, help="where --refresh-rates writes (default: the --rates file)")


def run(args) -> int:
    if args.refresh_rates is not None or args.measure_storage is not None:
        source = args.rates or default_rates_path()
        out = args.rates_out or source
        rates = refresh_rates(source, args.refresh_rates, args.measure_storage, out)
        print(f"wrote {out} (version {rates['version']})")
        if args.shape is None and args.size_um is None:
            return 0
    if args.shape is None and args.size_um is None:
        raise ValueError("give the volume as --shape Z Y X (voxels) or --size-um Z Y X (micrometres)")
    if args.voxel_size is None:
        raise ValueError("--voxel-size Z Y X (nm) is required")
    shape = args.shape if args.shape is not None else shape_from_size(args.size_um, args.voxel_size)
    block_shape, chunk_shape, pyramid = args.block_shape, args.chunk_shape, None
    per_job, max_jobs, passes = args.per_job or "auto", args.max_jobs, 1
    if args.config is not None:
        from connectomix import config as cmx_config

        cfg = cmx_config.load(args.config)
        block_shape = block_shape or cfg["blocks"]["shape"]
        chunk_shape = chunk_shape or cfg["storage"]["chunk_shape"]
        pyramid = cfg["pyramid"]
        per_job = args.per_job or cfg["blocks"]["per_job"]
        max_jobs = max_jobs if max_jobs is not None else cfg["blocks"]["max_jobs"]
        from connectomix.predict import augment_variants

        passes = len(augment_variants(cfg["predict"]["augment"], args.voxel_size[1] == args.voxel_size[2]))
    rates = load_rates(args.rates)
    plan = make_plan(shape, args.voxel_size, block_shape, chunk_shape, pyramid, rates, source=args.source,
                     per_job=per_job, max_jobs=max_jobs, predict_passes=passes)
    print(render(plan), end="")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(plan, indent=1) + "\n")
    return 0
