"""The plan: the workflow's steps, the checked rates file, and jobs, hours and storage for a volume
(``make_plan``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from connectomix import config as cmx_config
from connectomix.blocks import BlockBatches, BlockGrid, batch_shape_for
from connectomix.plan.render import _zyx

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
    Step("mesh", "setup", "mesh_setup", "dataset"),
    Step("mesh", "block", "mesh_block", "block"),
    Step("mesh", "finish", "mesh_finish", "dataset"),
    Step("synapses", "setup", "synapses_setup", "dataset"),
    Step("synapses", "block", "synapses_block", "block"),
    Step("synapses", "stitch", "synapses_stitch", "dataset"),
    Step("connectome", "build", "connectome", "dataset"),
    Step("connectome", "export", "export_connectome", "dataset"),
    Step("mesh", "figure", "mesh_figure", "dataset"),
    Step("export", "precomputed", "export_precomputed_segmentation", "dataset"),
    Step("export", "skeletons", "export_skeletons", "dataset"),
    Step("export", "annotations", "export_annotations", "dataset"),
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
