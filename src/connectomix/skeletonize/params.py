"""Skeletonization parameters: the `skeletonize:` config section (defaults in the config schema), merged."""

from __future__ import annotations

from connectomix import config


class _Resolved(dict):
    """A parameter set ``resolve`` has completed: resolving it again returns it as it is (the merge calls
    ``resolve`` for every segment, several times; a deep copy of the defaults each time adds up)."""


def resolve(params: dict | None = None) -> dict:
    """The full parameter set: ``params`` (possibly partial, as in the config) over the schema's defaults."""
    if isinstance(params, _Resolved):
        return params
    return _Resolved(config.resolve("skeletonize", params))
