"""``ingest``: stream a source into the dataset's ``raw`` (uint8 OME-Zarr + pyramid), grow it in place when the
dataset is extended, and record its provenance; on failure nothing partial is left."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from connectomix import io
from connectomix.blocks import Roi
from connectomix.ingest.normalize import Normalization, _check_finite, plan_normalization
from connectomix.ingest.readers import _open_reader, probe
from connectomix.ingest.source import MIN_SECTIONS, SourceInfo, _check_source
from connectomix.provenance import DIGEST_ATTR, data_digest, file_checksum, merkle_digest, record

RAW = "raw"
CHECKSUM_MAX_BYTES = 256 << 20  # files larger than this are recorded by size and mtime, not sha256
CHECKSUM_BUDGET = 1 << 30  # total bytes hashed per ingest; past it, size and mtime only


def _check_roi(roi, shape):
    if roi is None:
        return Roi((0, 0, 0), tuple(shape))
    if isinstance(roi, dict):
        roi = Roi(tuple(int(v) for v in roi["offset"]), tuple(int(v) for v in roi["shape"]))
    elif not isinstance(roi, Roi):
        offset, size = roi
        roi = Roi(tuple(int(v) for v in offset), tuple(int(v) for v in size))
    if len(roi.offset) != 3 or len(roi.shape) != 3 or min(roi.offset) < 0 or min(roi.shape) < 1:
        raise ValueError(f"roi offset {roi.offset} and shape {roi.shape} must be 3 voxel counts each (z, y, x), "
                         f"offset >= 0, shape >= 1")
    if any(e > s for e, s in zip(roi.end, shape)):
        raise ValueError(f"roi offset {roi.offset} + shape {roi.shape} exceeds the source shape {tuple(shape)}")
    if roi.shape[0] < MIN_SECTIONS:
        raise ValueError(f"roi shape {roi.shape}: one section only; a volume needs >= {MIN_SECTIONS} sections")
    return roi


def _file_record(path: Path, budget: list[int]) -> dict:
    stat = path.stat()
    entry = {"bytes": stat.st_size, "mtime": stat.st_mtime}
    if stat.st_size <= CHECKSUM_MAX_BYTES and budget[0] >= stat.st_size > 0:
        entry["sha256"] = file_checksum(path)
        budget[0] -= stat.st_size
    return entry


def _input_records(info: SourceInfo, z_range: range, checksums: bool = True) -> dict:
    """Checksums of the files read (sha256 up to the size limits, else bytes and mtime; only those without
    ``checksums``)."""
    budget = [CHECKSUM_BUDGET if checksums else 0]
    if info.files:
        return {info.files[z]: _file_record(Path(info.files[z]), budget) for z in z_range}
    path = Path(info.path)
    if path.is_file():
        return {str(path): _file_record(path, budget)}
    # zarr/N5 folder: checksum the metadata, summarise the chunk files
    base = path / info.key if info.key else path
    out = {}
    n_files, total, newest = 0, 0, 0.0
    for dirpath, _, names in os.walk(base):
        for name in names:
            file = Path(dirpath) / name
            if name in (".zarray", ".zattrs", ".zgroup", "zarr.json", "attributes.json"):
                out[str(file)] = _file_record(file, budget)
            else:
                stat = file.stat()
                n_files, total, newest = n_files + 1, total + stat.st_size, max(newest, stat.st_mtime)
    out[f"{base}/*"] = {"chunk_files": n_files, "bytes": total, "newest_mtime": newest}
    return out


def source_identity(source: dict) -> str:
    """A digest of the identity of every file the source reads (name, size, modification time; no data read): the
    workflow passes it to ingest, so that a replaced or edited source file reruns ingest."""
    info = probe(_check_source(source))
    records = _input_records(info, range(info.shape[0]), checksums=False)
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:32]


def _inputs_unchanged(previous: dict, info: SourceInfo) -> bool:
    """Whether every file the previous ingest read still has the size, modification time (and sha256, where both
    recorded one) it had; False when there is no record to compare with."""
    recorded = previous.get("inputs") or {}
    if not recorded:
        return False
    z0 = previous["roi"]["offset"][0]
    current = _input_records(info, range(z0, min(z0 + previous["roi"]["shape"][0], info.shape[0])))
    for name, before in recorded.items():
        now = current.get(name)
        if now is None or any(before.get(k) != now.get(k) for k in ("bytes", "mtime", "chunk_files", "newest_mtime")):
            return False
        if "sha256" in before and "sha256" in now and before["sha256"] != now["sha256"]:
            return False
    return True


def _volume_cleanup(volume_root: Path):
    """What to delete on failure: the ``raw`` array, plus the folders this call creates."""
    first_new = None
    p = volume_root.resolve()
    while not p.exists():
        first_new = p
        p = p.parent

    def cleanup():
        shutil.rmtree(volume_root / RAW, ignore_errors=True)
        if first_new is not None:
            shutil.rmtree(first_new, ignore_errors=True)

    return cleanup


def previous_ingest(volume_root) -> dict | None:
    """What the last ingest into ``volume_root`` recorded (``raw``'s ``ingest`` attributes, with the array's
    ``voxel_size``, ``offset_nm`` and ``chunks``), or None when there is no ``raw`` written by ingest."""
    if not io.has_array(volume_root, RAW):
        return None
    meta = io.read_meta(volume_root, RAW)
    recorded = meta.attrs.get("ingest")
    if not recorded or "roi" not in recorded or "normalization" not in recorded:
        return None
    return {**recorded, "voxel_size": list(meta.voxel_size), "offset_nm": list(meta.offset_nm),
            "chunks": list(meta.chunks), "shape": list(meta.shape),
            "inputs": meta.attrs.get("provenance", {}).get("inputs", {})}


def check_extension(previous: dict | None, source: dict, roi_offset, shape) -> str | None:
    """How an ingest of ``source`` cropped at ``roi_offset`` to ``shape`` relates to the ``previous`` one: None (no
    previous ingest, or another source or ROI offset: a new dataset), ``'same'`` (same shape) or ``'grow'``
    (larger along some axes). The same source and offset with a shape smaller along some axis raises
    ``ValueError``: a dataset only grows in + directions (its block grid stays anchored at the ROI offset, and
    blocks already computed are kept)."""
    if previous is None:
        return None
    if _check_source(previous["source"]) != _check_source(source):
        return None
    old_offset, old_shape = list(previous["roi"]["offset"]), list(previous["roi"]["shape"])
    roi_offset, shape = [int(v) for v in roi_offset], [int(v) for v in shape]
    if old_offset != roi_offset:
        return None
    if any(n < o for n, o in zip(shape, old_shape)):
        raise ValueError(
            f"{source.get('path')}: the dataset was ingested with ROI offset {old_offset} shape {old_shape}; the new "
            f"shape {shape} is smaller along some axis. A dataset can only grow, in + directions (blocks already "
            "computed are kept). Delete the dataset's results folder to start over with a smaller ROI.")
    return "same" if shape == old_shape else "grow"


def _normalization_from(record: dict) -> Normalization:
    return Normalization(record["method"], record["dtype_in"], record.get("lo"), record.get("hi"),
                         record.get("sample") or {})


def ingest(
    source: dict,
    volume_root: str | os.PathLike,
    voxel_size: Sequence[float],
    offset_nm: Sequence[float] = (0, 0, 0),
    chunk_shape: Sequence[int] = (8, 64, 64),
    roi=None,
    pyramid_levels: int = 3,
    pyramid_factor: Sequence[int] = (1, 2, 2),
    digest_block_shape: Sequence[int] | None = None,
) -> dict:
    """Read ``source`` into the array ``raw`` (uint8, z, y, x) of the OME-Zarr ``volume_root``; return a summary.

    ``roi`` (a ``blocks.Roi``, ``{'offset', 'shape'}`` or ``(offset, shape)`` in source voxels) crops the source;
    the written array's translation is then ``offset_nm + roi.offset * voxel_size`` so it stays in the source's
    frame. Reads ``chunk_shape[0]`` sections at a time. Normalization: :func:`plan_normalization`. Writes the
    pyramid (``io.build_pyramid``) and records provenance (input checksums, source, normalization) in the array's
    ``connectomix`` attributes. On any error the ``raw`` array is deleted before the error propagates.

    ``digest_block_shape`` (voxels, z a multiple of ``chunk_shape[0]``): the summary's ``block_digests`` then gives
    a digest of every block of that grid, so the workflow reruns exactly the blocks whose raw voxels changed. A
    source whose files changed since the last ingest (size, modification time, sha256) is ingested afresh, as a
    new dataset, normalization included.
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    volume_root = Path(volume_root)
    cleanup = _volume_cleanup(volume_root)
    reader = None
    try:  # every failure, bad arguments included, leaves no `raw` (an old one would be stale)
        source = _check_source(source)
        voxel_size = tuple(float(v) for v in voxel_size)
        offset_nm = tuple(float(o) for o in offset_nm)
        chunk_shape = tuple(int(c) for c in chunk_shape)
        if len(voxel_size) != 3 or min(voxel_size) <= 0:
            raise ValueError(f"voxel_size must be 3 positive numbers (z, y, x) in nm, got {voxel_size}")
        if len(offset_nm) != 3 or len(chunk_shape) != 3 or min(chunk_shape) < 1:
            raise ValueError(f"offset_nm must have 3 numbers and chunk_shape 3 positive integers, "
                             f"got {offset_nm} and {chunk_shape}")
        info = probe(source)
        roi = _check_roi(roi, info.shape)
        timings["probe_s"] = time.perf_counter() - t
        t = time.perf_counter()
        origin = tuple(o + r * v for o, r, v in zip(offset_nm, roi.offset, voxel_size))
        previous = previous_ingest(volume_root)
        try:
            relation = check_extension(previous, source, roi.offset, roi.shape)
        except ValueError:
            cleanup = lambda: None  # noqa: E731 - a refused shrink leaves the dataset as it was
            raise
        same_dataset = relation is not None and _inputs_unchanged(previous, info) and (
            previous["dtype_in"] == str(info.dtype)
            and tuple(previous["voxel_size"]) == voxel_size and tuple(previous["offset_nm"]) == origin
            and tuple(previous["chunks"]) == tuple(min(c, s) for c, s in zip(chunk_shape, previous["roi"]["shape"])))
        reader = _open_reader(info)
        if same_dataset:  # planned once per dataset: the voxels ingested before keep their values
            norm = _normalization_from(previous["normalization"])
        else:
            norm = plan_normalization(reader, info, roi, source["normalize"])
        timings["sample_s"] = time.perf_counter() - t
        t = time.perf_counter()
        extend = same_dataset and relation == "grow"
        if extend:
            cleanup = lambda: None  # noqa: E731 - a failed extension leaves the old box as it was
            array, _ = io.ensure_array(volume_root, RAW, roi.shape, np.uint8, chunk_shape, voxel_size, origin)
            stats = _copy(reader, array, roi, norm, chunk_shape[0], keep=tuple(previous["roi"]["shape"]),
                          digest_block_shape=digest_block_shape)
        else:
            array = io.create_array(volume_root, RAW, roi.shape, np.uint8, chunk_shape, voxel_size, origin)
            stats = _copy(reader, array, roi, norm, chunk_shape[0], digest_block_shape=digest_block_shape)
        reader.close()
        reader = None
        if stats["out_min"] == stats["out_max"]:
            raise ValueError(f"{source['path']}: every ingested voxel has the value {stats['out_min']} (a blank or "
                             f"constant volume): there is nothing to segment. Check the source (key, channel) and "
                             f"the roi")
        timings["write_s"] = time.perf_counter() - t
        t = time.perf_counter()
        levels = io.build_pyramid(volume_root, RAW, pyramid_levels, pyramid_factor)
        timings["pyramid_s"] = time.perf_counter() - t
        z_range = range(roi.offset[0], roi.end[0])
        ingest_meta = {
            "source": source,
            "format": info.format,
            "source_shape": list(info.shape),
            "dtype_in": str(info.dtype),
            "roi": {"offset": list(roi.offset), "shape": list(roi.shape)},
            "normalization": norm.as_dict(),
            "extended_from": list(previous["roi"]["shape"]) if extend else None,
        }
        provenance = record(
            config={"source": source, "roi": ingest_meta["roi"], "voxel_size": list(voxel_size),
                    "offset_nm": list(offset_nm), "chunk_shape": list(chunk_shape),
                    "pyramid": {"levels": pyramid_levels, "factor": list(pyramid_factor)}},
            inputs=_input_records(info, z_range),
        )
        io.update_attrs(volume_root, RAW, provenance=provenance, ingest=ingest_meta,
                        **{DIGEST_ATTR: stats["content_sha256"]})
    except BaseException:
        if reader is not None:
            reader.close()
        cleanup()
        raise
    return {
        "volume": str(volume_root),
        "array": RAW,
        **ingest_meta,
        "shape": list(roi.shape),
        "dtype_out": "uint8",
        "voxel_size": list(voxel_size),
        "offset_nm": list(origin),
        "chunk_shape": list(array.chunks),
        "pyramid_levels": levels,
        "ignored_files": list(info.ignored),
        **stats,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }


def _copy(reader, array, roi, norm: Normalization, slab: int, keep=None, digest_block_shape=None) -> dict:
    """Stream the ROI into ``array`` ``slab`` sections at a time; output statistics along the way.

    ``keep`` (array voxels, z y x): the box at the array's origin that already holds data (a dataset being
    extended); it is read back from ``array`` for the statistics, and only the rest is read from the source and
    written. ``clipped`` counts the voxels read from the source. ``content_sha256``: the array's checksum, from
    the slabs' digests; ``block_digests`` (with ``digest_block_shape``): a digest per block of that grid, from the
    digests of its parts in each slab."""
    ny, nx = roi.shape[1], roi.shape[2]
    hist = np.zeros(256, np.int64)
    clipped = 0
    parts = {}  # slab digests: the array's content checksum without reading it again
    block_parts: dict[str, list[str]] = {}
    if digest_block_shape is not None:
        bz, by, bx = (int(v) for v in digest_block_shape)
        if bz % slab:
            raise ValueError(f"digest block shape {tuple(digest_block_shape)}: z must be a multiple of the chunk's "
                             f"{slab} sections")
    for a0 in range(0, roi.shape[0], slab):
        a1 = min(a0 + slab, roi.shape[0])
        out = np.empty((a1 - a0, ny, nx), np.uint8)
        new_parts = [(a0, a1, 0, ny, 0, nx)]
        if keep is not None and a0 < keep[0]:
            k1 = min(a1, keep[0])
            out[:k1 - a0, :keep[1], :keep[2]] = array[a0:k1, :keep[1], :keep[2]]
            new_parts = [(a0, k1, keep[1], ny, 0, nx), (a0, k1, 0, keep[1], keep[2], nx), (k1, a1, 0, ny, 0, nx)]
        for z0, z1, y0, y1, x0, x1 in new_parts:
            if z1 <= z0 or y1 <= y0 or x1 <= x0:
                continue
            zs = roi.offset[0] + z0
            block = reader.read(zs, roi.offset[0] + z1, slice(roi.offset[1] + y0, roi.offset[1] + y1),
                                slice(roi.offset[2] + x0, roi.offset[2] + x1))
            _check_finite(block, reader.where, zs)
            part, n_clipped = norm.apply(block, reader.where(zs))
            clipped += n_clipped
            out[z0 - a0:z1 - a0, y0:y1, x0:x1] = part
            if keep is None:
                array[z0:z1] = part
            else:
                array[z0:z1, y0:y1, x0:x1] = part
            del block, part
        hist += np.bincount(out.ravel(), minlength=256)
        parts[f"z{a0:012d}"] = data_digest(out)
        if digest_block_shape is not None:
            for y0 in range(0, ny, by):
                for x0 in range(0, nx, bx):
                    block = f"z{a0 // bz}_y{y0 // by}_x{x0 // bx}"
                    block_parts.setdefault(block, []).append(data_digest(out[:, y0:y0 + by, x0:x0 + bx]))
        del out
    total = int(hist.sum())
    nonzero = np.flatnonzero(hist)
    return {
        "voxels": total,
        "clipped": clipped,
        "clipped_fraction": clipped / total,
        "out_min": int(nonzero[0]),
        "out_max": int(nonzero[-1]),
        "out_mean": float((hist * np.arange(256)).sum() / total),
        "content_sha256": merkle_digest(array.shape, array.dtype, parts),
        **({"block_digests": {"block_shape": [int(v) for v in digest_block_shape],
                              "digests": {block: hashlib.sha256("|".join(digests).encode()).hexdigest()[:32]
                                          for block, digests in block_parts.items()}}}
           if digest_block_shape is not None else {}),
    }
