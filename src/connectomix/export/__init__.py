"""Exports that real clients read: SWC, Neuroglancer precomputed and state, neuPrint CSVs, GraphML.

Each exporter is a module beside this file (``export.skeletons``, ``export.neuroglancer``, ``export.connectome``)
that adds its own CLI action with ``add_arguments(subparsers)`` (a subparser with ``func=...``).
"""

from __future__ import annotations

from connectomix.cli import add_plugin_actions


EXPORTERS = ("skeletons", "neuroglancer", "connectome")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    add_plugin_actions(sub, __name__, EXPORTERS)


def run(args) -> int:
    return args.func(args)
