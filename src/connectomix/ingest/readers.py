"""Probing and reading a source: image sequences, multi-page TIFFs, HDF5, zarr and N5, section by section or
in slabs (``read(z0, z1, ys, xs) -> (z1 - z0, ny, nx)``), with the colour rule applied."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import numpy as np

from connectomix.ingest.n5 import N5Array
from connectomix.ingest.source import MIN_SECTIONS, SourceInfo, _check_dtype, _check_source, _where, natural_key

_EXTENSIONS = {"tiff": (".tif", ".tiff"), "png": (".png",), "jpeg": (".jpg", ".jpeg")}
_HDF5_EXT = (".h5", ".hdf5", ".hdf", ".he5")


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
