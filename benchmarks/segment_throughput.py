"""Segmentation throughput: the whole connectomix segment stage run blockwise (setup, fragments, RAG,
agglomeration, relabel, finish) vs waterz on the whole volume, same run, same input; and the peak memory of each
block job (one process per block via the CLI, peak RSS recorded in the block markers), also for the same
synthetic volume tiled 2 x 2 x 2 (8x the voxels, same block shape): a block job's memory must not grow with the
volume.

One command: ``python benchmarks/segment_throughput.py`` -> benchmarks/results/segment_throughput.{json,md}.
Input: gala-fibsem test affinities from test-p1 when ../shared/data exists, a synthetic 32x256x256 volume, and
the same tiled 2 x 2 x 2 with config.yaml's block and chunk shapes (the row `plan` takes its rates from).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_accuracy import SHARED, affinities_from_boundary, quiet  # noqa: E402

from connectomix import blockwise  # noqa: E402
from connectomix.segment import stitch  # noqa: E402
from connectomix.synthetic import segment as syn  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
WORKERS = len(os.sched_getaffinity(0))  # the blockwise steps again on this many processes (block jobs in parallel)


def volumes():
    """name -> (affinities, voxel size, block shape, chunk shape)."""
    out = {}
    shape = (32, 256, 256)
    gt = syn.voronoi_labels(shape, 150, seed=21, anisotropy=(40, 8, 8))
    affs = syn.degrade(syn.affinities_from_labels(gt), seed=22)
    out["synthetic-32x256x256"] = (affs, (40, 8, 8), (16, 128, 128), (8, 32, 32))
    # 8x the voxels, with config.yaml's block and chunk shapes (the ones `plan` scales up)
    out["synthetic-32x256x256 tiled 2 x 2 x 2"] = (np.tile(affs, (1, 2, 2, 2)), (40, 8, 8), (24, 192, 192), (8, 64, 64))
    gala = SHARED / "gala-fibsem" / "test-p1.lzf.h5"
    if gala.exists():
        import h5py

        with h5py.File(gala) as f:
            p1 = np.asarray(f["stack"]).astype(np.float32)
        out["gala-test-p1"] = (affinities_from_boundary(p1), (10, 10, 10), (24, 64, 64), (8, 32, 32))
    return out


def block_job_memory(root, work, n_blocks: int) -> dict:
    """Run a few blocks of each blockwise step as separate CLI processes; their markers hold the peak RSS."""
    s = blockwise.load_setup(work, "segment")
    ids = blockwise.grid_of(s).ids()
    picks = ids[:: max(1, len(ids) // n_blocks)][:n_blocks]
    peaks = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for step in ("fragments", "rag", "relabel"):
        for b in picks:
            subprocess.run([sys.executable, "-m", "connectomix", "segment", "block", "--step", step, "--work-dir",
                            str(work), "--blocks", b], check=True, capture_output=True, env=env)
        marks = [json.loads(blockwise.marker_path(s, step, b).read_text()) for b in picks]
        peaks[f"segment_{step}"] = max(m["peak_rss_mb"] for m in marks)
    # the import baseline of a bare process, for reference
    base = subprocess.run([sys.executable, "-c", "import connectomix.blockwise as b; print(b.peak_rss_mb())"],
                          check=True, capture_output=True, text=True, env=env)
    peaks["import_baseline"] = float(base.stdout.strip())
    return peaks


def main(argv=None) -> int:
    import waterz

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--memory-blocks", type=int, default=3, help="blocks per step measured in subprocesses")
    args = parser.parse_args(argv)
    rows = []
    for name, (affs, voxel, block, chunks) in volumes().items():
        tmp = Path(tempfile.mkdtemp(prefix="cmx_tp_"))
        root = tmp / "volume.zarr"
        syn.write_test_volume(root, affs, voxel, chunks)
        t = time.perf_counter()
        summary = stitch.segment_volume(root, tmp / "segment", {}, block, chunks)
        ours = time.perf_counter() - t
        t = time.perf_counter()
        pooled = stitch.segment_volume(root, tmp / "segment_pooled", {}, block, chunks, workers=WORKERS)
        ours_pooled = time.perf_counter() - t
        f32 = affs.astype(np.float32) / 255
        t = time.perf_counter()
        quiet(lambda: next(waterz.agglomerate(f32, [0.5])).copy())
        theirs = time.perf_counter() - t
        vox = int(np.prod(affs.shape[1:]))
        row = {"dataset": name, "voxels": vox, "blocks": summary["blocks"], "block_shape": list(block),
               "chunk_shape": list(chunks),
               "connectomix_seconds": ours, "connectomix_voxels_per_s": vox / ours,
               "waterz_seconds": theirs, "waterz_voxels_per_s": vox / theirs, "ratio_vs_waterz": theirs / ours,
               "workers": WORKERS, "connectomix_workers_seconds": ours_pooled,
               "ratio_vs_waterz_workers": theirs / ours_pooled, "step_seconds_workers": pooled["timings"],
               "step_seconds": summary["timings"], "peak_rss_mb": block_job_memory(root, tmp / "segment",
                                                                                    args.memory_blocks)}
        rows.append(row)
        print(json.dumps(row, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Segmentation throughput (serial blocks in one process, and the blockwise steps on a process pool)\n",
             "`python benchmarks/segment_throughput.py`. connectomix = whole stage blockwise (setup, fragments, RAG, "
             "agglomerate, relabel, segments.parquet); waterz = zwatershed + agglomeration on the whole volume "
             "in memory (threshold 0.5), one process. Peak RSS per block job from separate CLI processes (MB). "
             f"Last columns: the same stage with its blockwise steps on {WORKERS} processes (all this machine's "
             "cores; agglomerate and finish stay one job), as the workflow runs block jobs side by side.\n",
             "| dataset | voxels | blocks | block / chunk shape | connectomix vox/s | waterz vox/s | "
             "waterz/connectomix time ratio | seconds fragments / rag / agglomerate / relabel / finish | "
             "peak RSS fragments / rag / relabel (MB) | import baseline (MB) | "
             f"connectomix vox/s, {WORKERS} processes | waterz/connectomix time ratio, {WORKERS} processes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["peak_rss_mb"]
        steps = " / ".join(f"{r['step_seconds'][k]:.2f}" for k in ("fragments", "rag", "agglomerate", "relabel",
                                                                       "finish"))
        lines.append(f"| {r['dataset']} | {r['voxels']} | {r['blocks']} | {r['block_shape']} / {r['chunk_shape']} | "
                     f"{r['connectomix_voxels_per_s']:.3g} | {r['waterz_voxels_per_s']:.3g} | "
                     f"{r['ratio_vs_waterz']:.3f} | {steps} | {p['segment_fragments']:.0f} / "
                     f"{p['segment_rag']:.0f} / {p['segment_relabel']:.0f} | {p['import_baseline']:.0f} | "
                     f"{r['voxels'] / r['connectomix_workers_seconds']:.3g} | {r['ratio_vs_waterz_workers']:.3f} |")
    scaling = memory_scaling(args.memory_blocks)
    (out / "segment_throughput.json").write_text(json.dumps({"rows": rows, "block_memory_scaling": scaling},
                                                            indent=1))
    lines += ["", "## Peak RSS of one block job vs volume size (MB)", "",
              "The synthetic volume's affinities and the same tiled 2 x 2 x 2, same block shape; max over "
              f"{args.memory_blocks} blocks per step, each its own CLI process.", "",
              "| step | " + " | ".join(f"{r['voxels']:,} voxels ({r['blocks']} blocks)" for r in scaling) +
              " | ratio large / small |", "|---|" + "---|" * (len(scaling) + 1)]
    for step in ("segment_fragments", "segment_rag", "segment_relabel"):
        peaks = [r["peak_rss_mb"][step] for r in scaling]
        lines.append(f"| {step} | " + " | ".join(f"{v:.0f}" for v in peaks) + f" | {peaks[-1] / peaks[0]:.2f} |")
    (out / "segment_throughput.md").write_text("\n".join(lines) + "\n")
    return 0


def memory_scaling(n_blocks: int) -> list:
    """Peak RSS per block job for the synthetic volume and for it tiled 2 x 2 x 2 (same block shape)."""
    affs, voxel, block, _ = volumes()["synthetic-32x256x256"]
    out = []
    for tiles in (1, 2):
        tiled = np.tile(affs, (1, tiles, tiles, tiles))
        tmp = Path(tempfile.mkdtemp(prefix="cmx_mem_"))
        root = tmp / "volume.zarr"
        syn.write_test_volume(root, tiled, voxel, (8, 32, 32))
        summary = stitch.segment_volume(root, tmp / "segment", {}, block, (8, 32, 32))  # then re-run single blocks
        out.append({"voxels": int(np.prod(tiled.shape[1:])), "blocks": summary["blocks"],
                    "peak_rss_mb": block_job_memory(root, tmp / "segment", n_blocks)})
        print(json.dumps(out[-1]))
    return out


if __name__ == "__main__":
    sys.exit(main())
