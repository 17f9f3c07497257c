"""``python -m connectomix.summary RESULTS``: say where a run's outputs are (printed at the end of `make demo`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summarize(results: Path) -> str:
    lines = [f"connectomix outputs under {results.resolve()}:"]
    for dataset in sorted(p for p in results.iterdir() if (p / "volume.zarr").is_dir()):
        arrays = sorted(
            str(p.parent.relative_to(dataset / "volume.zarr"))
            for p in (dataset / "volume.zarr").rglob("0/.zarray")
        )
        lines.append(f"  {dataset.name}/")
        lines.append(f"    volume.zarr (OME-Zarr): {', '.join(arrays)}")
        for name in ("gt/montage.png", "segments.parquet", "neurons.parquet", "edges.parquet",
                     "synapses.parquet", "eval/metrics.json"):
            if (dataset / name).exists():
                lines.append(f"    {name}")
        metrics = dataset / "eval" / "metrics.json"
        if metrics.exists():
            for key, value in sorted(json.loads(metrics.read_text()).items()):
                if isinstance(value, (int, float)):
                    lines.append(f"      {key} = {value:.4g}")
    report = results / "report.html"
    if report.exists():
        lines.append(f"  report: {report}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1] if len(sys.argv) > 1 else "results")))
