"""Accuracy against ground truth. Each stage's evaluator writes ``eval/{stage}.json``; ``merge`` combines them
into ``eval/metrics.json`` with dotted keys (``segmentation.voi_split``, ``skeletons.erl_nm``, ...).

Stage evaluators live beside this file (``evaluate.segmentation``, ``evaluate.skeletons``, ...); each adds its own
action to ``connectomix evaluate`` (``evaluate.cli``).
"""

from __future__ import annotations

import json
from pathlib import Path

from connectomix.blocks import atomic_write_json


def write_stage_metrics(path: str | Path, stage: str, metrics: dict, **extra) -> None:
    """Write one stage's metrics (flat mapping of name -> number) atomically; ``extra`` adds context fields."""
    atomic_write_json(path, {"stage": stage, "metrics": metrics, **extra})


def merge(stage_files: list[str | Path], out: str | Path) -> dict:
    """Combine stage metric files into one mapping ``{"stage.metric": value}`` written to ``out``."""
    merged: dict = {}
    for path in sorted(stage_files, key=str):
        with open(path) as f:
            data = json.load(f)
        for key, value in data["metrics"].items():
            merged[f"{data['stage']}.{key}"] = value
    atomic_write_json(out, merged)
    return merged
