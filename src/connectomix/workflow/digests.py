"""Digests the block rules take as params, so that a checkpoint's new output reruns exactly the batches it changes
(see "Extending a dataset" in rules/common.smk). They read files a checkpoint wrote, at most once per change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_CACHED: dict = {}


def load_cached(path, load):
    """``load(path)``, read again only when the file changed (size, mtime): digest params are asked for once per
    job, and planning time matters at 10^4+ blocks; None when the file does not exist (yet)."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _CACHED.get(str(path))
    if cached is None or cached[0] != key:
        cached = _CACHED[str(path)] = (key, load(path))
    return cached[1]


def _blocks_digest(digests: dict, blocks) -> str:
    """One digest over the per-block digests of ``blocks`` (a block without one counts as empty)."""
    digest = hashlib.sha256()
    for block in blocks:
        digest.update(f"{block}:{digests.get(block, '')};".encode())
    return digest.hexdigest()[:32]


def lut_digest(lut_digests, blocks) -> str:
    """A digest of the lookup-table rows of the fragments of ``blocks``, from ``segment/lut_digests.json`` (written
    by segment_agglomerate, a checkpoint); "none" before it exists."""
    digests = load_cached(lut_digests, lambda p: json.loads(p.read_text()))
    if digests is None:
        return "none"
    return _blocks_digest(digests, blocks)


def somata_digest(somata, roi, voxel_size) -> str:
    """A digest of the somata (``skeletonize/somata.parquet``, a checkpoint's output) whose cleared sphere reaches
    ``roi`` (a batch's read ROI): a soma far away does not touch a block. "none" before the file exists."""
    import pandas as pd

    from connectomix.skeletonize.soma import somata_meeting

    table = load_cached(somata, pd.read_parquet)
    if table is None:
        return "none"
    rows = somata_meeting(table, roi.offset, roi.shape, voxel_size)
    return hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()[:32]


def raw_digest(ingest_summary, blocks) -> str:
    """A digest of the raw voxels of ``blocks`` (ids), from the per-block digests ingest wrote to its summary
    (``ingest.json``, ``block_digests``): a predict batch takes it as a param, so a changed source reruns exactly the
    blocks that read changed voxels once ingest (and the predict setup, a checkpoint) ran. "none" before it exists."""
    summary = load_cached(ingest_summary, lambda p: json.loads(p.read_text()))
    if summary is None:
        return "none"
    digests = summary.get("block_digests", {}).get("digests", {})
    return _blocks_digest(digests, blocks)



def file_digests(paths) -> str:
    """One digest over the contents of ``paths`` (files a checkpoint wrote, e.g. align's transforms); a missing
    file counts as empty, so the digest is "none"-like before the checkpoint ran."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update((load_cached(path, lambda p: hashlib.sha256(p.read_bytes()).hexdigest()) or "").encode())
    return digest.hexdigest()[:32]
