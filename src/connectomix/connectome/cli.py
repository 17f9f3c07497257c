"""``connectomix connectome``: neurons, edges and the connectivity matrix of a dataset."""

from __future__ import annotations

import json

from connectomix.connectome.tables import build


def add_arguments(parser) -> None:
    """Options of ``connectomix connectome``."""
    parser.add_argument("--synapses", required=True, help="synapses.parquet")
    parser.add_argument("--segments", help="segments.parquet (segment ids and voxel counts)")
    parser.add_argument("--morphology", help="morphology.parquet (soma detection, morphology features)")
    parser.add_argument("--volume", help="OME-Zarr with the segmentation (voxel size; soma fallback)")
    parser.add_argument("--segmentation", default="segmentation", help="segment label array in --volume")
    parser.add_argument("--params", default="{}", help="JSON of the `connectome:` config section")
    parser.add_argument("--out-dir", required=True, help="results/{dataset}")
    parser.add_argument("--name", default="", help="dataset name for the figure title")


def run(args) -> int:
    """Build the connectome tables and print the summary."""
    try:
        params = json.loads(args.params)
    except ValueError as error:
        raise ValueError(f"--params is not valid JSON ({error})") from None
    summary = build(args.synapses, args.out_dir, args.segments, args.morphology, args.volume, args.segmentation,
                    params, args.name)
    print(json.dumps({k: v for k, v in summary.items() if k != "provenance"}))
    return 0
