"""``connectomix mesh``: ``setup | block | finish`` (:mod:`connectomix.blockwise`) and ``figure``."""

from __future__ import annotations

from connectomix.blockwise import add_arguments as blockwise_arguments
from connectomix.mesh.blockwise import STAGE


def add_arguments(parser) -> None:
    """``mesh setup | block | finish`` (connectomix.blockwise) and ``mesh figure``."""
    sub = blockwise_arguments(parser, STAGE)
    f = sub.add_parser("figure", help="a figure of a few neurons' meshes with their synapses")
    f.add_argument("--mesh-dir", required=True, help="the precomputed mesh folder (finish's --out)")
    f.add_argument("--synapses", required=True, help="synapses.parquet")
    f.add_argument("--neurons", required=True, help="neurons.parquet (neurons with a soma are drawn first)")
    f.add_argument("--count", type=int, default=4, help="neurons drawn (default 4)")
    f.add_argument("--out", required=True, help="the figure (.png or .svg)")
    f.set_defaults(func=_run_figure)


def _run_figure(args) -> int:
    import pandas as pd

    from connectomix.mesh.render import render

    chosen = render(args.mesh_dir, pd.read_parquet(args.synapses), pd.read_parquet(args.neurons), args.out,
                    args.count)
    print(f"{args.out}: segments {chosen}")
    return 0


def run(args) -> int:
    """Run one ``connectomix mesh`` action."""
    return int(args.func(args) or 0)
