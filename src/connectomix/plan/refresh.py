"""Refreshing the rates file from benchmark results and a finished run's storage (``refresh_rates``)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import yaml

from connectomix import config as cmx_config


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
    path = bench_dir / "mesh_throughput.json"
    if path.exists():
        row = max(json.loads(path.read_text())["rows"], key=lambda r: math.prod(r["shape"]))
        voxels = math.prod(row["shape"])
        for step, key in (("block", "blocks_s"), ("finish", "finish_s")):
            out[f"mesh.{step}"] = {
                "cpu_voxels_per_core_second": round(voxels / row[key]),
                "source": rel(path.name),
                "derivation": f"{row['volume']}: {voxels} voxels / {key} {row[key]} s (one process)",
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
