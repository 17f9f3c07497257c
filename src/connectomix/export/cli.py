"""``connectomix export ACTION``: one action per exporter module of this package."""

from __future__ import annotations

from connectomix.cli import add_plugin_actions

EXPORTERS = ("skeletons", "neuroglancer", "connectome", "annotations")


def add_arguments(parser) -> None:
    """One subcommand per exporter (each module's ``add_arguments(subparsers)``)."""
    sub = parser.add_subparsers(dest="action", required=True)
    add_plugin_actions(sub, __package__, EXPORTERS)


def run(args) -> int:
    """Run the chosen exporter's action."""
    return args.func(args)
