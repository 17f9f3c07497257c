"""``connectomix evaluate ACTION``: ``merge``, and one action per stage evaluator of this package."""

from __future__ import annotations

import json

from connectomix.cli import add_plugin_actions
from connectomix.evaluate import merge

EVALUATORS = ("align", "segmentation", "skeletons", "synapses", "connectome", "coregister", "analysis")


def add_arguments(parser) -> None:
    """``merge`` and one subcommand per evaluator (each module's ``add_arguments(subparsers)``)."""
    sub = parser.add_subparsers(dest="action", required=True)
    m = sub.add_parser("merge", help="combine eval/{stage}.json files into metrics.json")
    m.add_argument("stage_files", nargs="+", help="per-stage metric JSON files")
    m.add_argument("--out", required=True, help="metrics.json to write")
    add_plugin_actions(sub, __package__, EVALUATORS)


def run(args) -> int:
    """Merge the stage files, or run the chosen evaluator's action."""
    if args.action == "merge":
        merged = merge(args.stage_files, args.out)
        print(json.dumps(merged, indent=1, sort_keys=True))
        return 0
    return args.func(args)
