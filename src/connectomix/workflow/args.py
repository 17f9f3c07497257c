"""Command-line arguments the rules pass to ``python -m connectomix STAGE``, built from the config.

Every value that may hold a path or free text is shell-quoted here (``shlex.quote``); the rules insert these
strings unquoted (they may hold several arguments).
"""

from __future__ import annotations

import json
import shlex


def zyx(values) -> str:
    """A (z, y, x) triple (or any sequence of numbers) as space-separated arguments."""
    return " ".join(str(v) for v in values)


def json_arg(value) -> str:
    """A mapping as one shell-quoted JSON argument."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def roi_args(roi: dict | None) -> str:
    """``--roi-offset Z Y X --roi-shape Z Y X`` cropping a dataset to its configured ROI ('' when it has none)."""
    return f"--roi-offset {zyx(roi['offset'])} --roi-shape {zyx(roi['shape'])}" if roi else ""


def options(paths: dict) -> str:
    """``--key-name PATH`` per entry of ``{key_name: path}`` (shell-quoted), e.g. a rule's optional inputs."""
    return " ".join(f"--{key.replace('_', '-')} {shlex.quote(str(path))}" for key, path in paths.items())


def file_args(entry: dict, prefix: str = "gt", roi: dict | None = None) -> str:
    """CLI arguments for a file entry of the config (``path``, optional ``format`` and ``key``): ``--{prefix}-file``,
    ``--{prefix}-format`` and ``--{prefix}-key``, then ``--gt-roi-offset`` when a dataset ``roi`` is given (the
    file covers the whole source; the job crops it from the ROI's offset)."""
    args = f"--{prefix}-file {shlex.quote(entry['path'])} --{prefix}-format {shlex.quote(entry.get('format', 'auto'))}"
    if "key" in entry:
        args += f" --{prefix}-key {shlex.quote(entry['key'])}"
    return args + roi_offset_args(roi)


def roi_offset_args(roi: dict | None) -> str:
    """`` --gt-roi-offset Z Y X`` for a dataset ROI (files of the whole source are cropped from its offset), or ''."""
    return f" --gt-roi-offset {zyx(roi['offset'])}" if roi else ""


def segmentation_gt_args(gt: dict | None, roi: dict | None) -> str:
    """CLI arguments of ``evaluate segmentation`` locating a dataset's ground truth (None: the phantom's
    ``gt/labels``)."""
    if gt is None:
        return "--gt-array gt/labels"
    return (file_args(gt, roi=roi) + f" --ignore {zyx(gt['ignore'])}"
            + (" --per-section" if gt["per_section"] else ""))
