"""Shared by the end-to-end tests (test_pipeline.py, test_slurm.py): the tiny phantom config, Snakemake runs in a
temporary working directory (`--directory`), and digests of a run's deterministic outputs.

Imported as `from helpers import ...` (pytest puts tests/ on sys.path: the folder has no __init__.py).
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

# One block per stage keeps the end-to-end run within CI's budget; block invariance has its own tests per stage.
TINY = {
    "results_dir": "results",
    "datasets": {
        "tiny": {
            "voxel_size": [40, 8, 8],
            "phantom": {"seed": 3, "shape": [16, 128, 128], "n_neurons": 6, "n_synapses": 8,
                        "n_orphan_synapses": 8, "soma_radius_nm": 170.0, "dendrite_length_nm": 700.0,
                        "axon_length_nm": 1500.0},
        }
    },
    "storage": {"chunk_shape": [8, 64, 64]},
    "blocks": {"shape": [16, 128, 128]},
    "pyramid": {"levels": 2},
}


def write_config(work: Path, config: dict = TINY) -> Path:
    """The config as work/config.yaml (work is created)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake_env(**extra: str) -> dict:
    """os.environ with this interpreter's bin/ first on PATH: the rules call `python`."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **extra}


def snakemake_cmd(work: Path, *args: str) -> list:
    """snakemake on the repository's Snakefile, in `work`, with work/config.yaml."""
    return [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
            "--configfile", str(work / "config.yaml"), *args]


def failure_report(result: subprocess.CompletedProcess, work: Path, tail: int = 2000,
                   results: str = "results") -> str:
    """Snakemake's output and the tail of every job log under work/{results}, for an assertion message."""
    logs = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-tail:]}"
                     for p in sorted((work / results).rglob("*.log")))
    return f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}\n{logs}"


def output_digests(results: Path) -> dict:
    """sha256 per deterministic output under `results`: the decoded data of every array in each volume.zarr (with
    dtype and shape), every parquet table (columns, dtypes, values) and the metric files eval/*.json (canonical
    JSON, floats to 12 significant digits, without connectomix_version). Not covered: summaries with timings (e.g. predict.json,
    segment.json), figures, logs, exports."""
    import numpy as np
    import pandas as pd
    import zarr

    out = {}
    for zarray in sorted(results.rglob("*.zarr/**/.zarray")):
        array = zarr.open_array(str(zarray.parent), mode="r")
        digest = hashlib.sha256(f"{array.dtype} {array.shape}".encode())
        digest.update(np.ascontiguousarray(array[...]).tobytes())
        out[zarray.parent.relative_to(results).as_posix()] = digest.hexdigest()
    for table in sorted(results.rglob("*.parquet")):
        frame = pd.read_parquet(table)
        digest = hashlib.sha256(repr((list(frame.columns), [str(t) for t in frame.dtypes])).encode())
        try:
            digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
        except TypeError:  # unhashable cells (lists, arrays)
            digest.update(frame.to_json(orient="split", double_precision=15).encode())
        out[table.relative_to(results).as_posix()] = digest.hexdigest()
    for metrics in sorted(results.glob("*/eval/*.json")):
        canonical = json.dumps(_canonical(json.loads(metrics.read_text())), sort_keys=True)
        out[metrics.relative_to(results).as_posix()] = hashlib.sha256(canonical.encode()).hexdigest()
    return out


def _canonical(value, digits: int = 12):
    """A metric file's JSON for comparison between runs: floats rounded to ``digits`` significant digits (sums
    over a dict filled by parallel workers, e.g. kimimaro's with --threads 2 in evaluate_skeletons, differ in the
    last bit between runs), and no connectomix_version (it names the git commit, which can move during a run)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _canonical(v, digits) for k, v in value.items() if k != "connectomix_version"}
    if isinstance(value, list):
        return [_canonical(v, digits) for v in value]
    return value
