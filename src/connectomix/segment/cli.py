"""``connectomix segment``: ``setup | block | finish`` (:mod:`connectomix.blockwise`), ``agglomerate`` and
``train-edges`` (the edge classifier of method 'learned')."""

from __future__ import annotations

import json

from connectomix.blockwise import add_arguments as blockwise_arguments
from connectomix.segment import train_edges
from connectomix.segment.stitch import STAGE, agglomerate


def add_arguments(parser) -> None:
    """``segment setup | block | finish`` (connectomix.blockwise), ``segment agglomerate``, ``segment train-edges``."""
    sub = blockwise_arguments(parser, STAGE)
    p = sub.add_parser("agglomerate", help="merge block RAGs, agglomerate globally, write the lookup table")
    p.add_argument("--work-dir", required=True, help="stage folder (results/{dataset}/segment)")
    p.set_defaults(func=lambda args: print(json.dumps(agglomerate(args.work_dir), sort_keys=True)))
    train_edges.add_arguments(sub)


def run(args) -> int:
    """Run one ``connectomix segment`` action."""
    return int(args.func(args) or 0)
