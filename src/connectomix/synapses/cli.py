"""``connectomix synapses``: ``setup | block | finish`` (:mod:`connectomix.blockwise`) and ``gt-maps``."""

from __future__ import annotations

from connectomix.blockwise import add_arguments as blockwise_arguments
from connectomix.synapses.blockwise import STAGE
from connectomix.synthetic.synapse_maps import write_ground_truth_maps


def add_arguments(parser) -> None:
    """``synapses setup | block | finish`` (connectomix.blockwise) and ``synapses gt-maps``."""
    sub = blockwise_arguments(parser, STAGE)
    gt = sub.add_parser("gt-maps", help="write synapse maps made from a phantom's ground truth (with noise)")
    gt.add_argument("--volume", required=True)
    gt.add_argument("--name", default="synapse_maps_gt", help="array to write")
    gt.add_argument("--radius-nm", type=float, default=80.0)
    gt.add_argument("--noise", type=float, default=0.1)
    gt.add_argument("--seed", type=int, default=0)
    gt.set_defaults(func=lambda args: print(write_ground_truth_maps(args.volume, args.name, args.radius_nm,
                                                                    args.noise, args.seed)))


def run(args) -> int:
    """Run one ``connectomix synapses`` action."""
    return int(args.func(args) or 0)
