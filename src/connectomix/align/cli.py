"""``connectomix align setup | block | finish`` (connectomix.blockwise): estimate the transforms, render blocks of
``aligned`` and ``defects``, then digests, pyramids and the summary."""

from __future__ import annotations

import argparse

from connectomix.align.blockwise import STAGE
from connectomix.blockwise import add_arguments as blockwise_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``align setup | block | finish``."""
    blockwise_arguments(parser, STAGE)


def run(args) -> int:
    return args.func(args)
