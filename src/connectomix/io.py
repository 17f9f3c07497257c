"""OME-Zarr (NGFF 0.4) volumes: one group per dataset, one multiscale image per named array.

Layout of ``results/{dataset}/volume.zarr``::

    raw/0, raw/1, ...            uint8 images, pyramid by mean
    gt/labels/0, ...             uint64 labels, pyramid by mode
    affinities/0, ...            (c, z, y, x) arrays have a channel axis

Every named array is a group carrying NGFF ``multiscales`` metadata (axes (c,) z, y, x; voxel size and offset
in nanometres as scale and translation), so napari, ome-zarr-py and Neuroglancer read it. Arrays are zarr format 2
with '/' chunk keys, as NGFF 0.4 prescribes. Extra attributes (provenance, quantization scale) go under the
``connectomix`` key of the group.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import zarr

NGFF_VERSION = "0.4"
LABEL_DTYPE = np.uint64


@dataclass(frozen=True)
class VolumeMeta:
    """What a named array's metadata says about level 0."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    voxel_size: tuple[float, float, float]  # nm (z, y, x)
    offset_nm: tuple[float, float, float]
    channels: tuple[str, ...] | None
    levels: int
    is_label: bool
    attrs: dict

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.shape[-3:])  # type: ignore[return-value]

    @property
    def spatial_chunks(self) -> tuple[int, int, int]:
        return tuple(self.chunks[-3:])  # type: ignore[return-value]


def _compressor():
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)


def _axes(has_channels: bool) -> list[dict]:
    axes = [{"name": "c", "type": "channel"}] if has_channels else []
    axes += [{"name": a, "type": "space", "unit": "nanometer"} for a in ("z", "y", "x")]
    return axes


def _dataset_entry(level: int, scale_zyx, offset_nm, has_channels: bool) -> dict:
    lead = [1.0] if has_channels else []
    return {
        "path": str(level),
        "coordinateTransformations": [
            {"type": "scale", "scale": lead + [float(s) for s in scale_zyx]},
            {"type": "translation", "translation": [0.0] * len(lead) + [float(o) for o in offset_nm]},
        ],
    }


def open_root(root: str | os.PathLike, mode: str = "a") -> zarr.Group:
    """The dataset's OME-Zarr group (created in mode 'a' if missing)."""
    if mode == "r" and not Path(root).exists():
        raise FileNotFoundError(f"no OME-Zarr volume at {root}")
    return zarr.open_group(str(root), mode=mode, zarr_format=2)


def create_array(
    root: str | os.PathLike,
    name: str,
    shape: Sequence[int],
    dtype,
    chunks: Sequence[int],
    voxel_size: Sequence[float],
    offset_nm: Sequence[float] = (0.0, 0.0, 0.0),
    channels: Sequence[str] | None = None,
    is_label: bool = False,
    attrs: dict | None = None,
    fill_value=0,
) -> zarr.Array:
    """Create (replacing any old one) the multiscale group ``name`` with an empty level-0 array.

    ``shape`` and ``chunks`` are (z, y, x), or (c, z, y, x) when ``channels`` names the channels.
    Returns the level-0 array, ready for blockwise writes.
    """
    shape = tuple(int(s) for s in shape)
    chunks = tuple(int(c) for c in chunks)
    has_channels = channels is not None
    ndim = 4 if has_channels else 3
    if len(shape) != ndim or len(chunks) != ndim:
        raise ValueError(
            f"{name}: shape {shape} and chunks {chunks} must have {ndim} axes "
            f"({'c, ' if has_channels else ''}z, y, x)"
        )
    if has_channels and len(channels) != shape[0]:
        raise ValueError(f"{name}: {len(channels)} channel names for {shape[0]} channels")
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape))
    group = open_root(root)
    if name in group:
        del group[name]
        shutil.rmtree(Path(root) / name, ignore_errors=True)
    sub = group.require_group(name)
    array = sub.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=fill_value,
        compressors=_compressor(),
        chunk_key_encoding={"name": "v2", "separator": "/"},
        overwrite=True,
    )
    _write_multiscales(sub, name, 1, (1, 1, 1), voxel_size, offset_nm, has_channels, is_label)
    meta = {"voxel_size": [float(v) for v in voxel_size], "offset_nm": [float(o) for o in offset_nm]}
    if has_channels:
        meta["channels"] = list(channels)
    meta.update(attrs or {})
    sub.attrs["connectomix"] = meta
    return array


def ensure_array(
    root: str | os.PathLike,
    name: str,
    shape: Sequence[int],
    dtype,
    chunks: Sequence[int],
    voxel_size: Sequence[float],
    offset_nm: Sequence[float] = (0.0, 0.0, 0.0),
    channels: Sequence[str] | None = None,
    is_label: bool = False,
    attrs: dict | None = None,
    fill_value=0,
) -> tuple[zarr.Array, str]:
    """The named array at ``shape``, keeping the data it already holds where it can (extending a dataset).

    An existing array with the same dtype, chunks, channels, voxel size and offset and a shape no larger on any
    axis is kept: resized in place when ``shape`` is larger (old voxels keep their values, the new ones read
    ``fill_value``), untouched when it is equal; its ``connectomix`` attributes are updated with ``attrs``.
    Anything else is created afresh (:func:`create_array`). Growing an axis on which the old array was smaller
    than one storage chunk would change the chunk shape (blocks would share chunks): that raises ``ValueError``.
    Returns (level-0 array, 'created' | 'resized' | 'kept').
    """
    shape = tuple(int(s) for s in shape)
    want_chunks = tuple(min(int(c), s) for c, s in zip(chunks, shape))
    if has_array(root, name):
        meta = read_meta(root, name)
        same = (
            np.dtype(meta.dtype) == np.dtype(dtype)
            and tuple(meta.voxel_size) == tuple(float(v) for v in voxel_size)
            and tuple(meta.offset_nm) == tuple(float(o) for o in offset_nm)
            and meta.channels == (tuple(channels) if channels is not None else None)
            and meta.is_label == is_label
            and len(meta.shape) == len(shape)
            and all(a <= b for a, b in zip(meta.shape, shape))
        )
        if same and tuple(meta.chunks) != want_chunks:
            clipped = tuple(min(int(c), s) for c, s in zip(chunks, meta.shape))
            if tuple(meta.chunks) == clipped:
                raise ValueError(
                    f"{Path(root) / name}: cannot grow {meta.shape} -> {shape}: the array is smaller than one storage "
                    f"chunk {tuple(chunks)} along a growing axis; delete {root} and run again")
            same = False
        if same:
            array = open_array(root, name, mode="r+")
            status = "kept"
            if tuple(array.shape) != shape:
                array.resize(shape)
                status = "resized"
            if attrs:
                update_attrs(root, name, **attrs)
            return array, status
    return create_array(root, name, shape, dtype, chunks, voxel_size, offset_nm, channels, is_label, attrs,
                        fill_value), "created"


def _write_multiscales(group, name, levels, factor, voxel_size, offset_nm, has_channels, is_label):
    datasets = []
    for level in range(levels):
        scale = [v * f**level for v, f in zip(voxel_size, factor)]
        # NGFF: a coarser voxel's centre shifts by half the extra size.
        shift = [o + (v * (f**level - 1)) / 2 for o, v, f in zip(offset_nm, voxel_size, factor)]
        datasets.append(_dataset_entry(level, scale, shift, has_channels))
    group.attrs["multiscales"] = [
        {
            "version": NGFF_VERSION,
            "name": name,
            "axes": _axes(has_channels),
            "datasets": datasets,
            "type": "mode" if is_label else "mean",
        }
    ]
    if is_label:
        group.attrs["image-label"] = {"version": NGFF_VERSION}


def delete_array(root: str | os.PathLike, name: str) -> None:
    """Remove a named array (all levels) if present: what a failed job calls so no partial output survives."""
    path = Path(root) / name
    if path.exists():
        shutil.rmtree(path)


def open_array(root: str | os.PathLike, name: str, level: int = 0, mode: str = "r") -> zarr.Array:
    """Open level ``level`` of the named array; a clear error if it is missing."""
    path = Path(root) / name / str(level)
    if not (path / ".zarray").exists():
        raise FileNotFoundError(f"no array '{name}' level {level} in {root} (looked for {path})")
    return zarr.open_array(str(path), mode=mode, zarr_format=2)


def has_array(root: str | os.PathLike, name: str) -> bool:
    return (Path(root) / name / "0" / ".zarray").exists()


def read_meta(root: str | os.PathLike, name: str) -> VolumeMeta:
    """Metadata of a named array (level 0): voxel size, offset, channels, pyramid levels, extra attributes."""
    array = open_array(root, name)
    group = zarr.open_group(str(Path(root) / name), mode="r", zarr_format=2)
    ms = group.attrs.get("multiscales")
    if not ms:
        raise ValueError(f"{Path(root) / name} has no NGFF 'multiscales' metadata")
    extra = dict(group.attrs.get("connectomix", {}))
    return VolumeMeta(
        name=name,
        shape=tuple(array.shape),
        dtype=array.dtype,
        chunks=tuple(array.chunks),
        voxel_size=tuple(extra.get("voxel_size", ms[0]["datasets"][0]["coordinateTransformations"][0]["scale"][-3:])),
        offset_nm=tuple(extra.get("offset_nm", (0.0, 0.0, 0.0))),
        channels=tuple(extra["channels"]) if "channels" in extra else None,
        levels=len(ms[0]["datasets"]),
        is_label="image-label" in group.attrs,
        attrs=extra,
    )


def level_transforms(root: str | os.PathLike, name: str) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """Per pyramid level of a named array, its (z, y, x) voxel size and the position of voxel (0, 0, 0)'s
    centre, nm, from the NGFF ``multiscales`` metadata (level 0 first)."""
    group = zarr.open_group(str(Path(root) / name), mode="r", zarr_format=2)
    ms = group.attrs.get("multiscales")
    if not ms:
        raise ValueError(f"{Path(root) / name} has no NGFF 'multiscales' metadata")
    out = []
    for entry in ms[0]["datasets"]:
        transforms = {t["type"]: t for t in entry["coordinateTransformations"]}
        scale = tuple(float(v) for v in transforms["scale"]["scale"][-3:])
        shift = transforms.get("translation", {}).get("translation", [0.0, 0.0, 0.0])
        out.append((scale, tuple(float(v) for v in shift[-3:])))
    return out


def update_attrs(root: str | os.PathLike, name: str, **fields) -> None:
    """Merge ``fields`` into the named array's ``connectomix`` attributes."""
    group = zarr.open_group(str(Path(root) / name), mode="a", zarr_format=2)
    meta = dict(group.attrs.get("connectomix", {}))
    meta.update(fields)
    group.attrs["connectomix"] = meta


def write_full(root, name, data: np.ndarray, chunks, voxel_size, offset_nm=(0, 0, 0), **kwargs) -> zarr.Array:
    """Create the named array and write ``data`` into it (for small volumes: phantoms, tests)."""
    array = create_array(root, name, data.shape, data.dtype, chunks, voxel_size, offset_nm, **kwargs)
    array[...] = data
    return array


# --- pyramid -------------------------------------------------------------------------------------------------


def _mode_pool(block: np.ndarray, factor: tuple[int, ...]) -> np.ndarray:
    """Most frequent value in each window (ties go to the smallest value); shape divisible by ``factor``."""
    shape = []
    for s, f in zip(block.shape, factor):
        shape += [s // f, f]
    windows = block.reshape(shape)
    nd = block.ndim
    windows = windows.transpose(list(range(0, 2 * nd, 2)) + list(range(1, 2 * nd, 2)))
    windows = windows.reshape(windows.shape[:nd] + (-1,))
    windows = np.sort(windows, axis=-1)
    counts = (windows[..., :, None] == windows[..., None, :]).sum(axis=-1)
    pick = np.argmax(counts, axis=-1)
    return np.take_along_axis(windows, pick[..., None], axis=-1)[..., 0]


def _mean_pool(block: np.ndarray, factor: tuple[int, ...], dtype) -> np.ndarray:
    shape = []
    for s, f in zip(block.shape, factor):
        shape += [s // f, f]
    mean = block.reshape(shape).mean(axis=tuple(range(1, 2 * block.ndim, 2)))
    if np.issubdtype(dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(dtype)


def build_pyramid(
    root: str | os.PathLike,
    name: str,
    levels: int,
    factor: Sequence[int] = (1, 2, 2),
    workers: int | None = None,
) -> int:
    """Add levels 1..levels-1 to the named array, each from the one before, blockwise with dask.

    Images are averaged; labels take the most frequent label in each window (mode). Levels stop early when a
    dimension would drop below one window. ``workers`` caps dask's threads (default: the job's CPU affinity).
    Returns the number of levels written (level 0 included).
    """
    import dask.array as da

    meta = read_meta(root, name)
    factor = tuple(int(f) for f in factor)
    if len(factor) != 3 or any(f < 1 for f in factor):
        raise ValueError(f"pyramid factor must be 3 positive integers (z, y, x), got {factor}")
    full_factor = ((1,) if meta.channels is not None else ()) + factor
    group = zarr.open_group(str(Path(root) / name), mode="a", zarr_format=2)
    for key in list(group.array_keys()):
        if key != "0":
            del group[key]
    written = 1
    for level in range(1, levels):
        source = open_array(root, name, level - 1)
        out_shape = tuple(s // f for s, f in zip(source.shape, full_factor))
        if min(out_shape[-3:]) < 1:
            break
        src = da.from_zarr(source)
        # Work in chunks that are whole multiples of the window so each output chunk comes from one task.
        work_chunks = tuple(max(f, (c // f) * f) for c, f in zip(source.chunks, full_factor))
        src = src[tuple(slice(0, o * f) for o, f in zip(out_shape, full_factor))].rechunk(work_chunks)
        if meta.is_label:
            pooled = src.map_blocks(_mode_pool, full_factor, dtype=source.dtype,
                                    chunks=tuple(tuple(c // f for c in cs) for cs, f in zip(src.chunks, full_factor)))
        else:
            pooled = src.map_blocks(_mean_pool, full_factor, source.dtype, dtype=source.dtype,
                                    chunks=tuple(tuple(c // f for c in cs) for cs, f in zip(src.chunks, full_factor)))
        target = group.create_array(
            str(level), shape=out_shape, chunks=tuple(min(c, s) for c, s in zip(meta.chunks, out_shape)),
            dtype=source.dtype, fill_value=0, compressors=_compressor(),
            chunk_key_encoding={"name": "v2", "separator": "/"}, overwrite=True,
        )
        da.store(pooled.rechunk(target.chunks), target, lock=False, scheduler="threads",
                 num_workers=workers or len(os.sched_getaffinity(0)))  # chunks aligned: no two tasks share one
        written += 1
    _write_multiscales(group, name, written, factor, meta.voxel_size, meta.offset_nm,
                       meta.channels is not None, meta.is_label)
    return written


# --- padded reads --------------------------------------------------------------------------------------------


def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into [0, n) without repeating the edge voxel (numpy 'reflect'), any distance away."""
    index = np.asarray(index)
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index >= n, period - index, index)


def read_padded(array, start: Sequence[int], shape: Sequence[int], volume_shape: Sequence[int] | None = None,
                shifts: np.ndarray | None = None) -> np.ndarray:
    """Read the box [start, start + shape) of a (z, y, x) array, mirroring the volume outside its bounds.

    ``array`` may be numpy or zarr; only the bounding box of the voxels needed is read. ``shifts`` (optional,
    (shape[0], 2) ints) offsets each section's in-plane read position (misalignment simulation).
    """
    volume_shape = tuple(volume_shape or array.shape[-3:])
    idx = [reflect_index(np.arange(s, s + n), v) for s, n, v in zip(start, shape, volume_shape)]
    if shifts is not None:
        out = np.empty(tuple(shape), dtype=array.dtype)
        for j, z in enumerate(idx[0]):
            iy = reflect_index(np.arange(start[1], start[1] + shape[1]) + shifts[j, 0], volume_shape[1])
            ix = reflect_index(np.arange(start[2], start[2] + shape[2]) + shifts[j, 1], volume_shape[2])
            y0, y1, x0, x1 = iy.min(), iy.max() + 1, ix.min(), ix.max() + 1
            section = np.asarray(array[int(z), y0:y1, x0:x1])
            out[j] = section[np.ix_(iy - y0, ix - x0)]
        return out
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    box = np.asarray(array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    return box[np.ix_(*(i - a for i, a in zip(idx, lo)))]
