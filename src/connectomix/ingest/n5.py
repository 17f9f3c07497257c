"""A minimal read-only N5 reader (the installed zarr 3 has no N5 store)."""

from __future__ import annotations

import bz2
import json
import lzma
import zlib
from pathlib import Path

import numpy as np

from connectomix.ingest.source import _where


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
