"""Exports that real clients read: SWC, Neuroglancer precomputed and state, neuPrint CSVs, GraphML.

Each exporter is a module beside this file (``export.skeletons``, ``export.neuroglancer``, ``export.connectome``)
that adds its own action to ``connectomix export`` (``export.cli``) with ``add_arguments(subparsers)`` (a subparser
with ``func=...``).
"""
