"""Accuracy against ground truth. Each stage's evaluator writes ``eval/{stage}.json``; ``merge`` combines them
into ``eval/metrics.json`` with dotted keys (``segmentation.voi_split``, ``skeletons.erl_nm``, ...).

Stage evaluators live beside this file (``evaluate.segmentation``, ``evaluate.skeletons``, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

from connectomix.blocks import atomic_write_json
from connectomix.cli import add_plugin_actions

EVALUATORS = ("segmentation", "skeletons", "synapses", "connectome", "coregister", "analysis")


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


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    m = sub.add_parser("merge", help="combine eval/{stage}.json files into metrics.json")
    m.add_argument("stage_files", nargs="+", help="per-stage metric JSON files")
    m.add_argument("--out", required=True, help="metrics.json to write")
    add_plugin_actions(sub, __name__, EVALUATORS)


def run(args) -> int:
    if args.action == "merge":
        merged = merge(args.stage_files, args.out)
        print(json.dumps(merged, indent=1, sort_keys=True))
        return 0
    return args.func(args)
