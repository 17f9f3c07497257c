"""``python -m connectomix STAGE ...``: the command line every Snakemake rule calls.

Each stage lives in ``connectomix.<module>`` and provides ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``--help`` is fast and a heavy import (torch) is paid
only by the stages that need it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from connectomix.provenance import version

# command -> (module, one-line description)
STAGES: dict[str, tuple[str, str]] = {
    "phantom": ("connectomix.phantom.cli", "generate the ground-truth phantom tissue block"),
    "ingest": ("connectomix.ingest.cli", "read TIFF/PNG/JPEG/HDF5/zarr/N5 sections into the dataset's OME-Zarr"),
    "pyramid": ("connectomix.pyramid", "add a multiscale pyramid to an array of an OME-Zarr volume"),
    "align": ("connectomix.align.cli", "align serial sections (coarse + elastic, solved globally); mark defects"),
    "train": ("connectomix.train.cli", "train the U-Net (affinities + synapse maps) on ground truth"),
    "pretrain": ("connectomix.train.pretrain", "self-supervised U-Net pretraining on unlabeled raw"),
    "predict": ("connectomix.predict", "blockwise U-Net inference: affinities and synapse maps"),
    "segment": ("connectomix.segment.cli", "watershed fragments, agglomeration, stitching, relabelling"),
    "skeletonize": ("connectomix.skeletonize.cli", "blockwise kimimaro skeletons, merged per segment; morphology"),
    "mesh": ("connectomix.mesh.cli", "blockwise zmesh meshes, merged per segment: Neuroglancer precomputed meshes"),
    "synapses": ("connectomix.synapses.cli", "synaptic clefts and partner assignment"),
    "connectome": ("connectomix.connectome.cli", "neurons, edges and connectome exports"),
    "coregister": ("connectomix.coregister.cli", "match two-photon ROIs to EM somata"),
    "analysis": ("connectomix.analysis.cli", "cell types, tuning and like-to-like analyses"),
    "export": ("connectomix.export.cli", "Neuroglancer precomputed, SWC and report exports"),
    "evaluate": ("connectomix.evaluate.cli", "accuracy against ground truth; metrics.json"),
    "view": ("connectomix.view", "serve a dataset's results to a local Neuroglancer (offline), or screenshot it"),
    "check-config": ("connectomix.config", "validate a config file against the schema"),
    "plan": ("connectomix.plan.cli", "jobs, CPU/GPU hours and storage per stage for a volume, from measured rates"),
}


def _top_parser() -> argparse.ArgumentParser:
    width = max(len(name) for name in STAGES)
    listing = "\n".join(f"  {name:<{width}}  {desc}" for name, (_, desc) in STAGES.items())
    parser = argparse.ArgumentParser(
        prog="connectomix",
        description="Connectome reconstruction from serial-section EM. Each command is one pipeline stage.",
        epilog=f"stages:\n{listing}\n\nRun 'connectomix STAGE --help' for a stage's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stage", choices=sorted(STAGES), metavar="STAGE", help="the stage to run")
    parser.add_argument("--version", action="version", version=f"connectomix {version()}")
    return parser


def add_plugin_actions(subparsers, package: str, names) -> None:
    """Let each existing module ``package.name`` add its own CLI action (``add_arguments(subparsers)``)."""
    for name in names:
        module_name = f"{package}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue
            raise
        module.add_arguments(subparsers)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        _top_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, description = STAGES[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"connectomix {name}", description=description)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, OSError) as error:
        # Bad input: one clear line naming what is wrong, a non-zero exit, no traceback noise.
        print(f"connectomix {name}: error: {error}", file=sys.stderr)
        return 1
