"""Exports that real clients read: SWC, Neuroglancer precomputed and state, neuPrint CSVs, GraphML.

Each exporter is a module beside this file (``export.skeletons``, ``export.neuroglancer``, ``export.connectome``)
that adds its own CLI action with ``add_arguments(subparsers)`` (a subparser with ``func=...``).
"""

from __future__ import annotations

import importlib

EXPORTERS = ("skeletons", "neuroglancer", "connectome")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    for name in EXPORTERS:
        module_name = f"connectomix.export.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue
            raise
        module.add_arguments(sub)


def run(args) -> int:
    return args.func(args)
