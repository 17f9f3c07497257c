"""Phantom generation time: the default block and a 64 x 512 x 512 one (target <= 20 s and <= 60 s on 2 cores).

    python benchmarks/phantom_speed.py

Writes results/phantom_speed.json and results/phantom_speed.md.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

from connectomix.phantom import PhantomParams, generate  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CASES = [
    ("default (48, 320, 320)", {}, 20.0),
    ("64 x 512 x 512", {"shape": [64, 512, 512]}, 60.0),
]


def main() -> int:
    rows = []
    for name, spec, target in CASES:
        params = PhantomParams.from_dict({"seed": 0, **spec})
        start = time.perf_counter()
        ph = generate(params, voxel_size=(40, 8, 8))
        seconds = time.perf_counter() - start
        voxels = ph.raw.size
        rows.append({
            "case": name, "shape": list(ph.raw.shape), "seconds": round(seconds, 2), "target_seconds": target,
            "within_target": seconds <= target, "mvoxels_per_second": round(voxels / seconds / 1e6, 3),
            "density": round(ph.stats["density"], 4), "n_objects": ph.stats["n_objects"],
            "n_synapses": ph.stats["n_synapses"], "n_neurons": ph.stats["n_neurons"],
        })
        print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    meta = {"cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(), "machine": platform.machine()}
    (RESULTS / "phantom_speed.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=1) + "\n")
    lines = ["# Phantom generation speed", "",
             f"{meta['cpu_count']} CPU cores visible, OMP_NUM_THREADS={meta['omp_num_threads']}; voxel 40 x 8 x 8 nm, "
             "default parameters except the shape.", "",
             "| case | shape (z, y, x) | seconds | target s | Mvoxel/s | density | objects | neurons | synapses |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {tuple(r['shape'])} | {r['seconds']} | {r['target_seconds']:g} "
                     f"{'(ok)' if r['within_target'] else '(over)'} | {r['mvoxels_per_second']} | {r['density']} | "
                     f"{r['n_objects']} | {r['n_neurons']} | {r['n_synapses']} |")
    (RESULTS / "phantom_speed.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
