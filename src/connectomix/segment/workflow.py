"""Helpers for rules/segment.smk and rules/evaluate.smk (kept out of the .smk files, as Snakemake's linter asks)."""

from __future__ import annotations

from connectomix.blocks import block_id, parse_block_id
from connectomix.config import file_args


def lower_neighbours(block: str) -> list[str]:
    """This block and the blocks just below it along z, y and x (whose fragments its RAG step reads)."""
    index = parse_block_id(block)
    out = [block]
    for axis in range(3):
        if index[axis] > 0:
            lower = list(index)
            lower[axis] -= 1
            out.append(block_id(lower))
    return out


def ground_truth_args(gt: dict | None, roi: dict | None) -> str:
    """CLI arguments of `evaluate segmentation` locating a dataset's ground truth (None: the phantom's gt/labels)."""
    if gt is None:
        return "--gt-array gt/labels"
    return (file_args(gt, roi=roi) + f" --ignore {' '.join(map(str, gt['ignore']))}"
            + (" --per-section" if gt["per_section"] else ""))
