"""``connectomix skeletonize``: ``setup | block | finish`` (:mod:`connectomix.blockwise`), ``somata`` and
``morphology``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from connectomix.blocks import atomic_write_json, atomic_write_parquet
from connectomix.blockwise import add_arguments as blockwise_arguments
from connectomix.blockwise import json_object, load_setup
from connectomix.provenance import input_digests, record
from connectomix.skeletonize.blockwise import SOMATA, STAGE
from connectomix.skeletonize.morphology import morphology_table, soma_ids, table_to_trees, with_soma_bodies
from connectomix.skeletonize.params import resolve
from connectomix.skeletonize.soma import find_somata_in_volume


def add_arguments(parser) -> None:
    """``skeletonize setup | block | finish`` (connectomix.blockwise), ``somata`` and ``morphology``."""
    sub = blockwise_arguments(parser, STAGE)
    so = sub.add_parser("somata", help="find the somata of the label array (once per volume, before the blocks)")
    so.add_argument("--work-dir", required=True, help="the stage's folder (holds setup.json; gets somata.parquet)")
    so.set_defaults(func=_run_somata)

    g = sub.add_parser("morphology", help="per-segment morphology table")
    g.add_argument("--skeletons", required=True, help="skeletons.parquet")
    g.add_argument("--params", type=json_object, default={}, help="`skeletonize:` config section as JSON")
    g.add_argument("--synapses", default=None,
                   help="optional parquet of synapse sites (id, z_nm, y_nm, x_nm, kind pre|post) for the "
                        "polarity split (axon_dendrite.method = synapses)")
    g.add_argument("--volume", default=None,
                   help="the dataset's OME-Zarr (optional): measure each soma as a body on --array (soma_body)")
    g.add_argument("--array", default="segmentation", help="label array of --volume (default segmentation)")
    g.add_argument("--out", required=True, help="morphology.parquet to write")
    g.add_argument("--summary", help="JSON summary with provenance to write (last)")
    g.set_defaults(func=_run_morphology)


def run(args) -> int:
    """Run one ``connectomix skeletonize`` action."""
    return int(args.func(args) or 0)


def _run_somata(args) -> int:
    s = load_setup(args.work_dir, "skeletonize")
    table = find_somata_in_volume(s["volume"], s["array"], resolve(s["params"]))
    atomic_write_parquet(table, Path(args.work_dir) / SOMATA)
    print(f"{len(table)} somata")
    return 0


def _run_morphology(args) -> int:
    params = resolve(args.params)
    skeletons = pd.read_parquet(args.skeletons)
    trees = table_to_trees(skeletons)
    synapses_by_id = None
    if args.synapses:
        syn = pd.read_parquet(args.synapses)
        synapses_by_id = {int(k): g for k, g in syn.groupby("id")}
    table = morphology_table(trees, params, synapses_by_id, soma_ids(skeletons))
    if args.volume:
        table = with_soma_bodies(table, args.volume, args.array, params)
    atomic_write_parquet(table, args.out)
    if args.summary:
        atomic_write_json(args.summary, {
            "segments": len(table), "with_soma": int(table["has_soma"].sum()) if len(table) else 0,
            "soma_bodies": int(table["soma_volume_nm3"].notna().sum()) if len(table) else 0,
            "provenance": record({"skeletonize": params},
                                 input_digests(args.volume, [args.array] if args.volume else [],
                                               {"skeletons": args.skeletons, "synapses": args.synapses})),
        })
    print(f"morphology of {len(table)} segments ({int(table['has_soma'].sum()) if len(table) else 0} with a soma)")
    return 0
