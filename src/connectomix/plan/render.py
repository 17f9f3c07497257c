"""The plan as text (``render``)."""

from __future__ import annotations

import math


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
