"""``connectomix mesh``: ``setup | block | finish`` (:mod:`connectomix.blockwise`)."""

from __future__ import annotations

from connectomix.blockwise import add_arguments as blockwise_arguments
from connectomix.mesh.blockwise import STAGE


def add_arguments(parser) -> None:
    """``mesh setup | block | finish`` (connectomix.blockwise)."""
    blockwise_arguments(parser, STAGE)


def run(args) -> int:
    """Run one ``connectomix mesh`` action."""
    return int(args.func(args) or 0)
