"""Inference throughput of the U-Net (voxels/s) and achieved conv FLOP/s against this machine's fp32 matmul FLOP/s.

    python benchmarks/predict_throughput.py [--threads N] [--shape Z Y X]

Uses the shipped checkpoint (models/phantom) when present, else the default architecture with random weights
(throughput does not depend on the weights). Conv FLOPs are counted analytically (2 per multiply-add,
cross-checked with torch.utils.flop_counter). Writes results/predict_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from connectomix.models import Architecture, UNet, load_checkpoint  # noqa: E402
from connectomix.predict import Predictor  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_flops(n: int = 2048, reps: int = 5) -> float:
    """Best fp32 matmul FLOP/s of n x n matrices (2 n^3 FLOPs each)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def forward_flops(model, arch, tile) -> tuple[float, float]:
    """(analytic, torch flop_counter) FLOPs of one forward pass on a tile."""
    from torch.utils.flop_counter import FlopCounterMode

    analytic, _ = arch.conv_flops_per_voxel(tile)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 1, *arch.input_shape(arch.valid_output_shape(tile))))
    return analytic, float(counter.get_total_flops())


def best_forward_seconds(model, x, reps: int = 3) -> float:
    """Fastest of ``reps`` forward passes (after one warm-up)."""
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 320, 320], help="volume to predict (voxels)")
    parser.add_argument("--checkpoint", default=str(ROOT / "models" / "phantom"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if (Path(args.checkpoint) / "checkpoint.json").exists():
        model, meta = load_checkpoint(args.checkpoint)
        source = args.checkpoint
    else:
        torch.manual_seed(0)
        model, source = UNet(Architecture()).eval(), "default architecture, random weights"
    arch = model.arch
    peak = matmul_flops()
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, size=tuple(args.shape), dtype=np.uint8)
    rows = []
    for tile in ([16, 128, 128], [16, 192, 192], [24, 256, 256]):
        out_tile = arch.valid_output_shape(tile)
        analytic, counted = forward_flops(model, arch, out_tile)
        # network alone: one tile, repeated; as the predictor runs it (channels-last weights) and, the baseline,
        # with the weights in torch's default layout (NCDHW)
        predictor = Predictor(model, "cpu", 1, out_tile)
        x = torch.zeros(1, 1, *arch.input_shape(out_tile))
        net_s = best_forward_seconds(predictor.model, x)
        ncdhw_s = best_forward_seconds(model, x)
        # whole pipeline: padded reads, tiling, sigmoid, assembly
        tiles = len(predictor._tiles((0, 0, 0), raw.shape)[2])
        t = time.perf_counter()
        predictor.predict(raw, (0, 0, 0), raw.shape)
        pipe_s = time.perf_counter() - t
        rows.append({
            "tile_output": list(out_tile), "tile_input": list(arch.input_shape(out_tile)),
            "flops_per_tile": analytic, "flops_per_tile_torch_counter": counted,
            "flops_per_output_voxel": analytic / int(np.prod(out_tile)),
            "network_seconds_per_tile": net_s, "network_flop_per_s": analytic / net_s,
            "network_fraction_of_matmul": analytic / net_s / peak,
            "network_voxels_per_s": int(np.prod(out_tile)) / net_s,
            "ncdhw_seconds_per_tile": ncdhw_s, "ncdhw_fraction_of_matmul": analytic / ncdhw_s / peak,
            "speedup_vs_ncdhw": ncdhw_s / net_s,
            "volume": list(raw.shape), "tiles": tiles, "pipeline_seconds": pipe_s,
            "pipeline_voxels_per_s": raw.size / pipe_s,
            "pipeline_flop_per_s": tiles * analytic / pipe_s,
            "pipeline_fraction_of_matmul": tiles * analytic / pipe_s / peak,
        })
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "threads": args.threads, "torch": torch.__version__, "model": source,
              "context": list(arch.context), "parameters": sum(p.numel() for p in model.parameters()),
              "matmul_fp32_flop_per_s": peak, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "predict_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Inference throughput (CPU, fp32)", "",
        f"Model: {source}; {result['parameters']} parameters, context {result['context']} voxels. "
        f"{args.threads} threads on {result['cpu_count']} cores; torch {torch.__version__}.",
        f"Measured fp32 matmul (2048^2): **{peak / 1e9:.1f} GFLOP/s** (the reference).", "",
        "| output tile (z,y,x) | kFLOP/voxel | network GFLOP/s | % of matmul | NCDHW weights: % of matmul | "
        "channels-last / NCDHW | network Mvox/s | pipeline Mvox/s | pipeline % of matmul |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tile_output']} | {r['flops_per_output_voxel'] / 1e3:.0f} | {r['network_flop_per_s'] / 1e9:.1f} | "
            f"{100 * r['network_fraction_of_matmul']:.0f} % | {100 * r['ncdhw_fraction_of_matmul']:.0f} % | "
            f"{r['speedup_vs_ncdhw']:.2f}x | {r['network_voxels_per_s'] / 1e6:.3f} | "
            f"{r['pipeline_voxels_per_s'] / 1e6:.3f} | {100 * r['pipeline_fraction_of_matmul']:.0f} % |")
    lines += ["", "FLOPs: conv / transposed-conv multiply-adds x 2, counted analytically "
              "(torch.utils.flop_counter agrees, see JSON). Network = one tile as the predictor runs it "
              "(weights channels-last, NDHWC); the NCDHW column is the same tile with torch's default weight "
              "layout, measured in the same run. Pipeline = padded reads + tiling + sigmoid + assembly "
              f"over a {list(raw.shape)} volume. The machine is shared, so timings are noisy.", ""]
    (RESULTS / "predict_throughput.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
