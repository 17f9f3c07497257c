"""``connectomix segment``: ``setup | block | finish`` (:mod:`connectomix.blockwise`) and ``agglomerate``."""

from __future__ import annotations

import json

from connectomix.blockwise import add_arguments as blockwise_arguments
from connectomix.segment.stitch import STAGE, agglomerate


def add_arguments(parser) -> None:
    """``segment setup | block | finish`` (connectomix.blockwise) and ``segment agglomerate``."""
    sub = blockwise_arguments(parser, STAGE)
    p = sub.add_parser("agglomerate", help="merge block RAGs, agglomerate globally, write the lookup table")
    p.add_argument("--work-dir", required=True, help="stage folder (results/{dataset}/segment)")
    p.set_defaults(func=lambda args: print(json.dumps(agglomerate(args.work_dir), sort_keys=True)))


def run(args) -> int:
    """Run one ``connectomix segment`` action."""
    return int(args.func(args) or 0)
