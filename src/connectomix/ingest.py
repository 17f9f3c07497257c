"""Ingest: read raw EM sections (TIFF, PNG/JPEG sequences, HDF5, zarr, N5) into the dataset's OME-Zarr ``raw``.

The output is always ``raw`` (uint8, axes z, y, x) in ``results/{dataset}/volume.zarr`` with a mean pyramid,
written through ``connectomix.io``. Reading streams: image sequences and multi-page TIFFs section by section,
containers (HDF5, zarr, N5) in slabs of ``chunk_shape[0]`` sections, so memory holds one slab, never the volume.

Sources (the ``source:`` mapping of a dataset in the config):

* ``path``: a folder of one image per section (``pattern`` selects files, natural sort: ``2.png`` before
  ``10.png``; hidden files and files without an image extension are ignored and listed in the summary), a
  multi-page TIFF, an HDF5 file, or a zarr (v2/v3) / N5 container.
* ``format``: ``auto`` (default) infers it from the path: ``.h5/.hdf5/.hdf/.he5`` HDF5, ``.zarr`` or a folder with
  ``.zarray/.zgroup/zarr.json`` zarr, ``.n5`` or a folder whose ``attributes.json`` has an ``n5`` version N5,
  ``.tif/.tiff`` file a multi-page TIFF, a folder of images by the images' extension.
* ``key``: the dataset inside HDF5 (required), zarr/N5 (optional when ``path`` is the array itself).
* ``normalize``: how input becomes uint8, see :func:`plan_normalization`.

Greyscale only. Colour images follow one rule: RGB(A) whose colour channels are all equal (grey saved as RGB) is
read as that grey channel, alpha ignored; a section with differing channels is refused (convert it yourself:
EM has no colour, so colour means the wrong file). Grey+alpha takes the grey channel. 1-bit images become 0/255.

Extending a dataset: when ``raw`` already holds an ingest of the same source, ROI offset, voxel size, offset and
chunks, and the new ROI (or the source itself, without ``roi``) is larger along some axes and smaller along none,
ingest grows ``raw`` in place and reads only the new region (+ z, + y, + x of the old box), with the
normalization recorded by the first ingest (planned once per dataset, so the old voxels keep their values and the
blocks computed from them stay valid). A smaller ROI with the same source and offset is refused
(:func:`check_extension`): a dataset only grows, in + directions, its block grid anchored at the ROI offset.

Bad input (unreadable, corrupt or truncated image, mixed section shapes or dtypes, missing key, empty folder,
NaN/inf, a single section, unknown format, colour) raises ``ValueError``/``FileNotFoundError`` naming the file and
the problem. On any failure the ``raw`` array is deleted (and the volume folder, when this call created it), so
a rerun never trusts a partial output.
"""

from __future__ import annotations

import bz2
import fnmatch
import json
import lzma
import math
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

RAW = "raw"
FORMATS = ("auto", "tiff", "png", "jpeg", "hdf5", "zarr", "n5")
NORMALIZE = ("auto", "minmax", "percentile", "none")
SOURCE_KEYS = {"path", "format", "key", "pattern", "normalize"}
MIN_SECTIONS = 2  # a 3D pipeline (z affinities, z pyramid) needs at least two sections
PERCENTILES = (0.1, 99.9)
SAMPLE_SECTIONS = 16  # sections read (evenly spaced, first and last included) to plan the normalization
SAMPLE_PIXELS = 1 << 18  # at most this many pixels kept per sampled section (strided in y and x)
SAMPLE_VOXELS = 1 << 20  # at most this many voxels in the whole sample (bounds the first pass's memory)
CHECKSUM_MAX_BYTES = 256 << 20  # files larger than this are recorded by size and mtime, not sha256
CHECKSUM_BUDGET = 1 << 30  # total bytes hashed per ingest; past it, size and mtime only

_EXTENSIONS = {"tiff": (".tif", ".tiff"), "png": (".png",), "jpeg": (".jpg", ".jpeg")}
_HDF5_EXT = (".h5", ".hdf5", ".hdf", ".he5")


@dataclass(frozen=True)
class SourceInfo:
    """What a source's headers say: ``shape`` (z, y, x), input ``dtype``, resolved ``format``, ``n_sections``."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    format: str
    n_sections: int
    path: str = ""
    key: str | None = None
    files: tuple[str, ...] = ()  # image sequences: the section files in z order
    ignored: tuple[str, ...] = ()  # image sequences: files in the folder that are not sections
    colour: bool = False  # sections carry colour/alpha samples (reduced to grey by the colour rule)


# --- source mapping ------------------------------------------------------------------------------------------


def _check_source(source: dict) -> dict:
    if not isinstance(source, dict):
        raise ValueError(f"source must be a mapping with at least 'path', got {source!r}")
    unknown = set(source) - SOURCE_KEYS
    if unknown:
        raise ValueError(f"source: unknown keys {sorted(unknown)}; allowed: {sorted(SOURCE_KEYS)}")
    if not source.get("path"):
        raise ValueError("source: 'path' is required")
    out = {"path": str(source["path"]), "format": source.get("format") or "auto",
           "key": source.get("key"), "pattern": source.get("pattern") or "*",
           "normalize": source.get("normalize") or "auto"}
    if out["format"] not in FORMATS:
        raise ValueError(f"{out['path']}: unknown source format {out['format']!r}; expected one of {FORMATS}")
    if out["normalize"] not in NORMALIZE:
        raise ValueError(f"{out['path']}: unknown normalize {out['normalize']!r}; expected one of {NORMALIZE}")
    return out


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: ``2.png`` before ``10.png``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def _is_n5(path: Path) -> bool:
    attrs = path / "attributes.json"
    if not attrs.is_file():
        return False
    try:
        return "n5" in json.loads(attrs.read_text())
    except (OSError, ValueError):
        return False


def _infer_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"{path}: source path does not exist")
    if path.is_file():
        if suffix in _HDF5_EXT:
            return "hdf5"
        for fmt, exts in _EXTENSIONS.items():
            if suffix in exts:
                return fmt
        with open(path, "rb") as f:
            magic = f.read(8)
        if magic.startswith(b"\x89HDF"):
            return "hdf5"
        if magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return "tiff"
        raise ValueError(f"{path}: unknown source format (extension {suffix!r}); set source.format explicitly")
    if suffix == ".n5" or _is_n5(path):
        return "n5"
    if suffix == ".zarr" or any((path / m).exists() for m in (".zarray", ".zgroup", "zarr.json")):
        return "zarr"
    return "sequence"  # a folder of images: resolved by the files' extensions


# --- probing --------------------------------------------------------------------------------------------------


def probe(source: dict) -> SourceInfo:
    """The source's shape (z, y, x), dtype, format and section count, from headers and metadata only.

    Cheap (no pixel data is decoded), so the Snakefile can call it while building the DAG. Every section header
    of an image sequence is read, so mixed shapes or dtypes are reported here, before anything is written.
    """
    source = _check_source(source)
    path = Path(source["path"])
    if not path.exists():
        raise FileNotFoundError(f"{path}: source path does not exist")
    fmt = source["format"]
    if fmt == "auto":
        fmt = _infer_format(path)
    if fmt in ("tiff", "png", "jpeg", "sequence") and path.is_dir():
        info = _probe_sequence(path, source["pattern"], None if fmt == "sequence" else fmt)
    elif fmt == "sequence":
        raise ValueError(f"{path}: unknown source format; set source.format explicitly")
    elif fmt == "tiff":
        info = _probe_multipage_tiff(path)
    elif fmt in ("png", "jpeg"):
        _probe_image(path, fmt)  # report a corrupt file before the section count
        raise ValueError(f"{path}: one section only (a single {fmt} image); a volume needs >= {MIN_SECTIONS}")
    elif fmt == "hdf5":
        with _open_hdf5(path, source["key"]) as dataset:
            info = _array_info(dataset.shape, dataset.dtype, "hdf5", f"{path}:{source['key']}", path, source["key"])
    elif fmt == "zarr":
        array = _open_zarr(path, source["key"])
        info = _array_info(array.shape, array.dtype, "zarr", _where(path, source["key"]), path, source["key"])
    elif fmt == "n5":
        array = N5Array.open(path, source["key"])
        info = _array_info(array.shape, array.dtype, "n5", _where(path, source["key"]), path, source["key"])
    else:  # pragma: no cover - _check_source guards this
        raise ValueError(f"{path}: unknown source format {fmt!r}")
    if info.n_sections < MIN_SECTIONS:
        raise ValueError(f"{_where(path, info.key)}: one section only (shape {info.shape}); "
                         f"a volume needs >= {MIN_SECTIONS} sections")
    return info


def _where(path, key) -> str:
    return f"{path}:{key}" if key else str(path)


def _check_dtype(dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in "buif":
        raise ValueError(f"{where}: unsupported data type {dtype} (need integers, floats or booleans)")
    return dtype


def _array_info(shape, dtype, fmt, where, path, key) -> SourceInfo:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        raise ValueError(f"{where}: one section only (2D array of shape {shape}); a volume needs "
                         f">= {MIN_SECTIONS} sections")
    if len(shape) != 3:
        raise ValueError(f"{where}: expected a 3D (z, y, x) greyscale array, got shape {shape}")
    if min(shape) < 1:
        raise ValueError(f"{where}: empty array of shape {shape}")
    return SourceInfo(shape, _check_dtype(dtype, where), fmt, shape[0], str(path), key)


def _list_sequence(folder: Path, pattern: str, fmt: str | None) -> tuple[list[Path], list[Path], str]:
    entries = sorted((p for p in folder.iterdir() if p.is_file() and fnmatch.fnmatch(p.name, pattern)),
                     key=lambda p: natural_key(p.name))
    by_format: dict[str, list[Path]] = {}
    ignored = []
    for p in entries:
        kind = next((k for k, exts in _EXTENSIONS.items() if p.suffix.lower() in exts), None)
        if p.name.startswith(".") or kind is None or (fmt is not None and kind != fmt):
            ignored.append(p)
        else:
            by_format.setdefault(kind, []).append(p)
    if not by_format:
        wanted = fmt or "TIFF/PNG/JPEG"
        raise FileNotFoundError(f"{folder}: no {wanted} images matching pattern {pattern!r} "
                                f"(empty folder or no image files)")
    if len(by_format) > 1:
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_format.items()))
        raise ValueError(f"{folder}: mixed image formats ({counts}); set source.format or source.pattern")
    kind, files = next(iter(by_format.items()))
    return files, ignored, kind


def _probe_image(path: Path, fmt: str) -> tuple[tuple[int, int], np.dtype, bool]:
    """(y, x) shape, dtype after the colour rule, whether it has colour/alpha samples; header only."""
    try:
        if fmt == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if len(tif.series) == 0 or len(tif.pages) == 0:
                    raise ValueError("no image in the file")
                series = tif.series[0]
                shape, dtype, axes = series.shape, series.dtype, series.axes
            if axes.endswith("S") and len(shape) == 3:
                return tuple(shape[:2]), np.dtype(dtype), True
            if len(shape) != 2:
                raise ValueError(f"a file per section must hold one 2D image, this one has shape {shape} "
                                 f"(axes {axes})")
            return tuple(shape), np.dtype(dtype), False
        from PIL import Image

        with Image.open(path) as im:  # parses the header only; pixel data is decoded in the write pass
            mode, size = im.mode, im.size
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"{path}: {error}") from error
    except Exception as error:  # noqa: BLE001 - any decoder error means a bad file
        raise ValueError(f"{path}: cannot read image ({type(error).__name__}: {error}); "
                         f"corrupt, truncated or not a {fmt} file?") from error
    dtype = {"1": np.bool_, "L": np.uint8, "LA": np.uint8, "P": np.uint8, "RGB": np.uint8, "RGBA": np.uint8,
             "I;16": np.uint16, "I;16B": np.uint16, "I;16L": np.uint16, "I": np.int32, "F": np.float32}.get(mode)
    if dtype is None:
        raise ValueError(f"{path}: unsupported image mode {mode!r}")
    return (size[1], size[0]), np.dtype(dtype), mode in ("LA", "P", "RGB", "RGBA")


def _probe_sequence(folder: Path, pattern: str, fmt: str | None) -> SourceInfo:
    files, ignored, kind = _list_sequence(folder, pattern, fmt)
    first_shape, first_dtype, colour = _probe_image(files[0], kind)
    for p in files[1:]:
        shape, dtype, c = _probe_image(p, kind)
        if shape != first_shape:
            raise ValueError(f"{p}: mixed section shapes: {shape} (y, x) here, {first_shape} in {files[0].name}")
        if dtype != first_dtype:
            raise ValueError(f"{p}: mixed section dtypes: {dtype} here, {first_dtype} in {files[0].name}")
        colour |= c
    dtype = _check_dtype(first_dtype, str(files[0]))
    return SourceInfo((len(files),) + first_shape, dtype, kind, len(files), str(folder),
                      files=tuple(str(p) for p in files), ignored=tuple(str(p) for p in ignored), colour=colour)


def _probe_multipage_tiff(path: Path) -> SourceInfo:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.series) == 0:
                raise ValueError("no image in the file")
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
            n_pages = len(series.pages)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read TIFF header ({type(error).__name__}: {error})") from error
    if axes.startswith("S"):
        raise ValueError(f"{path}: a planar colour image (axes {axes}, shape {shape}), not a stack of sections; "
                         f"EM sections must be greyscale")
    colour = axes.endswith("S")
    plane = shape[-3:-1] if colour else shape[-2:]
    stack = shape[:-3] if colour else shape[:-2]
    if len(stack) > 1:
        raise ValueError(f"{path}: TIFF has axes {axes} (shape {shape}); expected one stack of 2D sections")
    n = stack[0] if stack else 1
    if n > 1 and n_pages != n:
        raise ValueError(f"{path}: TIFF stores {n} sections in {n_pages} pages (e.g. an ImageJ contiguous "
                         f"stack); save one page per section")
    return SourceInfo((n,) + tuple(plane), _check_dtype(dtype, str(path)), "tiff", n, str(path), colour=colour)


# --- readers: read(z0, z1, ys, xs) -> (z1 - z0, ny, nx) --------------------------------------------------------


def _grey(image: np.ndarray, where: str) -> np.ndarray:
    """The colour rule: grey stays; RGB(A) with equal colour channels becomes grey; real colour is refused."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[-1] in (2, 3, 4):
        if image.shape[-1] == 2:  # grey + alpha
            return image[..., 0]
        rgb = image[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise ValueError(f"{where}: colour (RGB) image; EM sections must be greyscale (equal R, G, B). "
                             f"Convert it to greyscale first")
        return rgb[..., 0]
    raise ValueError(f"{where}: expected a 2D greyscale section, got shape {image.shape}")


def _decode_error(where, error) -> ValueError:
    return ValueError(f"{where}: cannot read image data ({type(error).__name__}: {error}); "
                      f"corrupt or truncated file?")


class _SequenceReader:
    """One image file per section."""

    def __init__(self, info: SourceInfo):
        self.info = info
        self.files = [Path(f) for f in info.files]

    def where(self, z: int) -> str:
        return str(self.files[z])

    def section(self, z: int) -> np.ndarray:
        path = self.files[z]
        try:
            if self.info.format == "tiff":
                import tifffile

                image = tifffile.imread(path, series=0)
            else:
                from PIL import Image

                with Image.open(path) as im:
                    if im.mode == "P":
                        im = im.convert("RGBA")
                    elif im.mode == "1":
                        im = im.convert("L")
                    im.load()
                    image = np.asarray(im)
                if image.dtype == np.uint8 and self.info.dtype == np.bool_:
                    image = image > 0
        except Exception as error:  # noqa: BLE001
            raise _decode_error(path, error) from error
        image = _grey(image, str(path))
        if image.shape != self.info.shape[1:]:
            raise ValueError(f"{path}: decoded shape {image.shape} differs from its header {self.info.shape[1:]}")
        return image

    def read(self, z0, z1, ys: slice, xs: slice) -> np.ndarray:
        return np.stack([self.section(z)[ys, xs] for z in range(z0, z1)])

    def close(self):
        pass


class _MultipageTiffReader(_SequenceReader):
    """A multi-page TIFF: one page per section, decoded one page at a time."""

    def __init__(self, info: SourceInfo):
        import tifffile

        self.info = info
        self.tif = tifffile.TiffFile(info.path)
        self.pages = self.tif.series[0].pages

    def where(self, z: int) -> str:
        return f"{self.info.path} (page {z})"

    def section(self, z: int) -> np.ndarray:
        try:
            image = self.pages[z].asarray()
        except Exception as error:  # noqa: BLE001
            raise _decode_error(self.where(z), error) from error
        image = _grey(image, self.where(z))
        if image.shape != self.info.shape[1:]:
            raise ValueError(f"{self.where(z)}: mixed section shapes: page shape {image.shape}, "
                             f"expected {self.info.shape[1:]}")
        return image

    def close(self):
        self.tif.close()


class _ArrayReader:
    """An HDF5 dataset, zarr array or N5 dataset: reads slabs directly."""

    def __init__(self, info: SourceInfo, array, handle=None):
        self.info = info
        self.array = array
        self.handle = handle

    def where(self, z: int) -> str:
        return f"{_where(self.info.path, self.info.key)} (section {z})"

    def read(self, z0, z1, ys: slice, xs: slice) -> np.ndarray:
        try:
            return np.asarray(self.array[z0:z1, ys, xs])
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"{_where(self.info.path, self.info.key)}: cannot read sections {z0}..{z1 - 1} "
                             f"({type(error).__name__}: {error}); corrupt or truncated?") from error

    def close(self):
        if self.handle is not None:
            self.handle.close()


class _Hdf5Handle:
    def __init__(self, path: Path, key):
        import h5py

        if not key:
            raise ValueError(f"{path}: HDF5 source needs source.key (the dataset path); "
                             f"datasets in the file: {_hdf5_datasets(path)}")
        try:
            self.file = h5py.File(path, "r")
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"{path}: cannot open as HDF5 ({type(error).__name__}: {error})") from error
        obj = self.file.get(key)
        if obj is None or not isinstance(obj, h5py.Dataset):
            names = _hdf5_datasets(path, self.file)
            self.file.close()
            what = "no dataset" if obj is None else "not a dataset:"
            raise ValueError(f"{path}: {what} {key!r} (datasets in the file: {names})")
        self.dataset = obj

    def __enter__(self):
        return self.dataset

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.file.close()


def _open_hdf5(path, key) -> _Hdf5Handle:
    return _Hdf5Handle(Path(path), key)


def _hdf5_datasets(path, handle=None) -> list[str]:
    import h5py

    names: list[str] = []
    try:
        f = handle or h5py.File(path, "r")
    except Exception:  # noqa: BLE001
        return names
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    if handle is None:
        f.close()
    return names


def _open_zarr(path: Path, key):
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{path}: cannot open as zarr ({type(error).__name__}: {error})") from error
    if key:
        if not isinstance(node, zarr.Group):
            raise ValueError(f"{path}: is a zarr array, but source.key {key!r} was given")
        try:
            node = node[key]
        except KeyError:
            raise ValueError(f"{path}: no array {key!r} (arrays: {_zarr_arrays(node)})") from None
    if not isinstance(node, zarr.Array):
        raise ValueError(f"{_where(path, key)}: is a zarr group; set source.key to one of its arrays: "
                         f"{_zarr_arrays(node)}")
    return node


def _zarr_arrays(group) -> list[str]:
    try:
        return sorted(name for name, _ in group.arrays()) + sorted(
            f"{g}/..." for g, _ in group.groups())
    except Exception:  # noqa: BLE001
        return []


# --- N5 --------------------------------------------------------------------------------------------------------


class N5Array:
    """A minimal read-only N5 dataset (the installed zarr 3 has no N5 store).

    Spec: ``attributes.json`` holds ``dimensions`` and ``blockSize`` (fastest axis first, i.e. x, y, z),
    ``dataType`` and ``compression`` (raw, gzip, bzip2, xz; blosc via numcodecs). A block is the file
    ``<dataset>/<ix>/<iy>/<iz>``: big-endian header (uint16 mode, uint16 ndim, ndim x uint32 block shape,
    plus a uint32 element count when mode is 1) then the compressed big-endian values, x fastest. Missing blocks
    read as 0. Indexing takes (z, y, x) slices with step 1.
    """

    _TYPES = {"uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64"}

    def __init__(self, path: Path, attrs: dict):
        self.path = path
        where = str(path)
        try:
            self.shape = tuple(int(d) for d in reversed(attrs["dimensions"]))
            self.block = tuple(int(b) for b in reversed(attrs["blockSize"]))
            type_name = attrs["dataType"]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}/attributes.json: not an N5 dataset (missing or bad {error})") from None
        if type_name not in self._TYPES:
            raise ValueError(f"{where}: unsupported N5 dataType {type_name!r}")
        self.dtype = np.dtype(type_name)
        compression = attrs.get("compression", {"type": attrs.get("compressionType", "raw")})
        self.compression = compression.get("type", "raw")
        if self.compression not in ("raw", "gzip", "bzip2", "xz", "blosc"):
            raise ValueError(f"{where}: unsupported N5 compression {self.compression!r}")

    @classmethod
    def open(cls, root: Path, key: str | None) -> "N5Array":
        root = Path(root)
        path = root / key if key else root
        attrs_file = path / "attributes.json"
        if not attrs_file.is_file():
            raise ValueError(f"{_where(root, key)}: no N5 dataset (missing {attrs_file})")
        try:
            attrs = json.loads(attrs_file.read_text())
        except ValueError as error:
            raise ValueError(f"{attrs_file}: invalid JSON ({error})") from None
        if "dimensions" not in attrs:
            sub = sorted(p.name for p in path.iterdir() if (p / "attributes.json").is_file())
            raise ValueError(f"{_where(root, key)}: is an N5 group, not a dataset; set source.key "
                             f"(datasets/groups: {sub})")
        return cls(path, attrs)

    def _decompress(self, data: bytes) -> bytes:
        if self.compression == "raw":
            return data
        if self.compression == "gzip":
            return zlib.decompress(data, 47)  # 32 + 15: gzip or zlib header, auto-detected
        if self.compression == "bzip2":
            return bz2.decompress(data)
        if self.compression == "xz":
            return lzma.decompress(data)
        from numcodecs import Blosc

        return bytes(Blosc().decode(data))

    def _read_block(self, index: tuple[int, int, int]) -> np.ndarray | None:
        file = self.path.joinpath(*(str(i) for i in reversed(index)))
        if not file.is_file():
            return None
        raw = file.read_bytes()
        try:
            mode, ndim = np.frombuffer(raw[:4], ">u2")
            if mode not in (0, 1) or ndim != 3:
                raise ValueError(f"block mode {mode}, ndim {ndim} (expected mode 0/1, ndim 3)")
            dims = tuple(int(d) for d in reversed(np.frombuffer(raw[4:4 + 4 * ndim], ">u4")))
            start = 4 + 4 * ndim + (4 if mode == 1 else 0)
            values = np.frombuffer(self._decompress(raw[start:]), self.dtype.newbyteorder(">"))
            count = dims[0] * dims[1] * dims[2]
            if values.size < count:
                raise ValueError(f"{values.size} values for a block of {dims}")
            return values[:count].reshape(dims).astype(self.dtype)
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"{file}: corrupt N5 block ({type(error).__name__}: {error})") from error

    def __getitem__(self, key) -> np.ndarray:
        bounds = [s.indices(n) for s, n in zip(key, self.shape)]
        if any(step != 1 for _, _, step in bounds):
            raise ValueError("N5Array supports step-1 slices only")
        start = [b[0] for b in bounds]
        stop = [max(b[0], b[1]) for b in bounds]
        out = np.zeros([e - s for s, e in zip(start, stop)], self.dtype)
        ranges = [range(s // b, -(-e // b)) for s, e, b in zip(start, stop, self.block)]
        for bz in ranges[0]:
            for by in ranges[1]:
                for bx in ranges[2]:
                    index = (bz, by, bx)
                    data = self._read_block(index)
                    if data is None:
                        continue
                    origin = [i * b for i, b in zip(index, self.block)]
                    src, dst = [], []
                    for o, d, s, e in zip(origin, data.shape, start, stop):
                        lo, hi = max(o, s), min(o + d, e)
                        src.append(slice(lo - o, max(lo, hi) - o))
                        dst.append(slice(lo - s, max(lo, hi) - s))
                    out[tuple(dst)] = data[tuple(src)]
        return out


# --- normalization ---------------------------------------------------------------------------------------------


@dataclass
class Normalization:
    """The mapping input -> uint8: ``method`` and, for linear maps, ``lo`` -> 0 and ``hi`` -> 255.

    Linear: ``out = clip(rint((x - lo) * 255 / (hi - lo)), 0, 255)``; values outside [lo, hi] saturate (counted).
    """

    method: str  # identity | bool | none | minmax | percentile
    dtype_in: str
    lo: float | None = None
    hi: float | None = None
    sample: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"method": self.method, "dtype_in": self.dtype_in, "lo": self.lo, "hi": self.hi,
                "formula": self.formula, "sample": self.sample}

    @property
    def formula(self) -> str:
        if self.method in ("minmax", "percentile"):
            return "clip(rint((x - lo) * 255 / (hi - lo)), 0, 255)"
        return {"identity": "x", "bool": "255 * x", "none": "x (values must be integers in 0..255)"}[self.method]

    def apply(self, block: np.ndarray, where: str) -> tuple[np.ndarray, int]:
        """The uint8 block and how many voxels were clipped (outside [lo, hi])."""
        if self.method == "identity":
            return block, 0
        if self.method == "bool":
            return block.astype(np.uint8) * np.uint8(255), 0
        if self.method == "none":
            lo, hi = block.min(), block.max()
            if lo < 0 or hi > 255 or (block.dtype.kind == "f" and not np.array_equal(block, np.rint(block))):
                raise ValueError(f"{where}: normalize 'none' needs integer values in 0..255, found "
                                 f"{lo}..{hi} ({block.dtype}); use normalize auto, minmax or percentile")
            return block.astype(np.uint8), 0
        x = block.astype(np.float32)
        clipped = int(np.count_nonzero((x < self.lo) | (x > self.hi)))
        x -= np.float32(self.lo)
        x *= np.float32(255.0 / (self.hi - self.lo))
        np.rint(x, out=x)
        np.clip(x, 0, 255, out=x)
        return x.astype(np.uint8), clipped


def _check_finite(block: np.ndarray, where_of, z0: int) -> None:
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        bad = np.flatnonzero(~np.isfinite(block).reshape(block.shape[0], -1).all(axis=1))[0]
        what = "NaN" if np.isnan(block[bad]).any() else "infinite"
        raise ValueError(f"{where_of(z0 + int(bad))}: contains {what} values; EM sections must be finite")


def sample_sections(z0: int, z1: int, n: int = SAMPLE_SECTIONS) -> list[int]:
    """Up to ``n`` section indices evenly spaced over [z0, z1), first and last included."""
    return sorted({int(round(z)) for z in np.linspace(z0, z1 - 1, min(n, z1 - z0))})


def plan_normalization(reader, info: SourceInfo, roi, method: str = "auto") -> Normalization:
    """Choose the input -> uint8 mapping from a first pass over a strided sample of the (cropped) volume.

    * ``auto``: uint8 unchanged; boolean -> 0/255; any other dtype as ``percentile``.
    * ``percentile``: the 0.1 and 99.9 percentiles of the sample map to 0 and 255 (robust to hot pixels).
    * ``minmax``: the sample's min and max map to 0 and 255.
    * ``none``: no scaling; every value must be an integer in 0..255 (checked on every slab), else an error.

    The sample: ``SAMPLE_SECTIONS`` (16) sections evenly spaced over the ROI's z range (all when fewer), each
    cropped to the ROI and strided in y and x (the same stride s on both axes, the smallest with at most
    min(``SAMPLE_PIXELS`` = 262144, ``SAMPLE_VOXELS`` / n_sampled = 1048576 / n) pixels kept); never one section
    alone, and at most ~1 M voxels in all, so the first pass's memory does not grow with the volume. Values beyond the sampled range saturate at 0/255 and are counted in the summary (``clipped``).
    If hi == lo (a constant sample), hi = lo + 1. NaN/inf anywhere in the sample is an error.
    """
    dtype = np.dtype(info.dtype)
    if method == "auto":
        method = "identity" if dtype == np.uint8 else "bool" if dtype == np.bool_ else "percentile"
    elif method == "none":
        method = "identity" if dtype == np.uint8 else "bool" if dtype == np.bool_ else "none"
    elif dtype == np.bool_:
        method = "bool"
    if method in ("identity", "bool", "none"):
        return Normalization(method, str(dtype))
    zs = sample_sections(roi.offset[0], roi.end[0])
    ny, nx = roi.shape[1], roi.shape[2]
    per_section = min(SAMPLE_PIXELS, SAMPLE_VOXELS // len(zs))
    stride = max(1, math.ceil(math.sqrt(ny * nx / per_section)))
    ys = slice(roi.offset[1], roi.end[1])
    xs = slice(roi.offset[2], roi.end[2])
    parts = []
    for z in zs:
        section = reader.read(z, z + 1, ys, xs)
        _check_finite(section, reader.where, z)
        parts.append(section[0, ::stride, ::stride].ravel())
    values = np.concatenate(parts)
    if method == "percentile":
        lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    else:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    sample = {"sections": zs, "stride_yx": stride, "voxels": int(values.size)}
    if method == "percentile":
        sample["percentiles"] = list(PERCENTILES)
    return Normalization(method, str(dtype), lo, hi, sample)


# --- ingest ----------------------------------------------------------------------------------------------------


def _open_reader(info: SourceInfo):
    path = Path(info.path)
    if info.files:
        return _SequenceReader(info)
    if info.format == "tiff":
        return _MultipageTiffReader(info)
    if info.format == "hdf5":
        handle = _open_hdf5(path, info.key)
        return _ArrayReader(info, handle.dataset, handle)
    if info.format == "zarr":
        return _ArrayReader(info, _open_zarr(path, info.key))
    return _ArrayReader(info, N5Array.open(path, info.key))


def _check_roi(roi, shape):
    from connectomix.blocks import Roi

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
    if stat.st_size <= CHECKSUM_MAX_BYTES and budget[0] >= stat.st_size:
        from connectomix.provenance import file_checksum

        entry["sha256"] = file_checksum(path)
        budget[0] -= stat.st_size
    return entry


def _input_records(info: SourceInfo, z_range: range) -> dict:
    """Checksums of the files read (sha256 up to the size limits, else bytes and mtime)."""
    budget = [CHECKSUM_BUDGET]
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
    from connectomix import io

    if not io.has_array(volume_root, RAW):
        return None
    meta = io.read_meta(volume_root, RAW)
    recorded = meta.attrs.get("ingest")
    if not recorded or "roi" not in recorded or "normalization" not in recorded:
        return None
    return {**recorded, "voxel_size": list(meta.voxel_size), "offset_nm": list(meta.offset_nm),
            "chunks": list(meta.chunks), "shape": list(meta.shape)}


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
) -> dict:
    """Read ``source`` into the array ``raw`` (uint8, z, y, x) of the OME-Zarr ``volume_root``; return a summary.

    ``roi`` (a ``blocks.Roi``, ``{'offset', 'shape'}`` or ``(offset, shape)`` in source voxels) crops the source;
    the written array's translation is then ``offset_nm + roi.offset * voxel_size`` so it stays in the source's
    frame. Reads ``chunk_shape[0]`` sections at a time. Normalization: :func:`plan_normalization`. Writes the
    pyramid (``io.build_pyramid``) and records provenance (input checksums, source, normalization) in the array's
    ``connectomix`` attributes. On any error the ``raw`` array is deleted before the error propagates.
    """
    from connectomix import io
    from connectomix.provenance import DIGEST_ATTR, record

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
        same_dataset = relation is not None and (
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
            stats = _copy(reader, array, roi, norm, chunk_shape[0], keep=tuple(previous["roi"]["shape"]))
        else:
            array = io.create_array(volume_root, RAW, roi.shape, np.uint8, chunk_shape, voxel_size, origin)
            stats = _copy(reader, array, roi, norm, chunk_shape[0])
        reader.close()
        reader = None
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


def _copy(reader, array, roi, norm: Normalization, slab: int, keep=None) -> dict:
    """Stream the ROI into ``array`` ``slab`` sections at a time; output statistics along the way.

    ``keep`` (array voxels, z y x): the box at the array's origin that already holds data (a dataset being
    extended); it is read back from ``array`` for the statistics, and only the rest is read from the source and
    written. ``clipped`` counts the voxels read from the source. ``content_sha256``: the array's checksum, from
    the slabs' digests."""
    from connectomix.provenance import data_digest, merkle_digest

    ny, nx = roi.shape[1], roi.shape[2]
    hist = np.zeros(256, np.int64)
    clipped = 0
    parts = {}  # slab digests: the array's content checksum without reading it again
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
    }


# --- CLI -------------------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    """Options of ``connectomix ingest``."""
    parser.add_argument("--source", required=True,
                        help="JSON of the dataset's source mapping: {path, format, key, pattern, normalize}")
    parser.add_argument("--volume", required=True, help="the dataset's OME-Zarr (results/{dataset}/volume.zarr)")
    parser.add_argument("--voxel-size", type=float, nargs=3, required=True, metavar=("Z", "Y", "X"),
                        help="voxel size, nm")
    parser.add_argument("--offset-nm", type=float, nargs=3, default=(0, 0, 0), metavar=("Z", "Y", "X"),
                        help="position of source voxel (0, 0, 0), nm")
    parser.add_argument("--chunk-shape", type=int, nargs=3, default=(8, 64, 64), metavar=("Z", "Y", "X"),
                        help="storage chunk, voxels; sections are read chunk_shape[0] at a time")
    parser.add_argument("--roi-offset", type=int, nargs=3, metavar=("Z", "Y", "X"), help="crop start, voxels")
    parser.add_argument("--roi-shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="crop size, voxels")
    parser.add_argument("--pyramid-levels", type=int, default=3, help="pyramid levels, level 0 included")
    parser.add_argument("--pyramid-factor", type=int, nargs=3, default=(1, 2, 2), metavar=("Z", "Y", "X"))
    parser.add_argument("--summary", help="write the summary JSON here (last, atomically)")


def run(args) -> int:
    """Run ``connectomix ingest``: ingest, then write the summary JSON (removing any stale one first)."""
    from connectomix.blocks import atomic_write_json

    if args.summary:
        Path(args.summary).unlink(missing_ok=True)  # a failed run must not leave an old summary to trust
    try:
        source = json.loads(args.source)
    except ValueError as error:
        raise ValueError(f"--source is not valid JSON ({error}): {args.source!r}") from None
    if (args.roi_offset is None) != (args.roi_shape is None):
        raise ValueError("--roi-offset and --roi-shape go together")
    roi = None if args.roi_offset is None else {"offset": args.roi_offset, "shape": args.roi_shape}
    t = time.perf_counter()
    summary = ingest(source, args.volume, args.voxel_size, args.offset_nm, args.chunk_shape, roi,
                     args.pyramid_levels, args.pyramid_factor)
    summary["timings"]["total_s"] = round(time.perf_counter() - t, 4)
    if args.summary:
        atomic_write_json(args.summary, summary)
    return 0
