"""The one block grid shared by every blockwise stage.

A volume of ``shape`` voxels (z, y, x) is cut into blocks of ``block_shape`` voxels. Each block has

* an id ``z{i}_y{j}_x{k}`` (grid indices),
* a *write ROI*: the voxels it owns, aligned to storage chunks and clipped to the volume (edge blocks are smaller),
* a *read ROI*: the write ROI grown by the stage's halo (context) and clipped to the volume.

Blocks never write outside their write ROI, so blocks of one stage never race. Iteration is in C order of the grid
indices (z slowest), which is deterministic. Per-block JSON markers are written last and atomically.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

_BLOCK_ID = re.compile(r"^z(\d+)_y(\d+)_x(\d+)$")


def _triple(values: Sequence[int], name: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 entries (z, y, x), got {values}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Roi:
    """A box of voxels: ``offset`` (inclusive start) and ``shape``, both (z, y, x)."""

    offset: tuple[int, int, int]
    shape: tuple[int, int, int]

    @property
    def end(self) -> tuple[int, int, int]:
        return tuple(o + s for o, s in zip(self.offset, self.shape))  # type: ignore[return-value]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, e) for o, e in zip(self.offset, self.end))  # type: ignore[return-value]

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def grow(self, halo: Sequence[int]) -> "Roi":
        halo = _triple(halo, "halo")
        return Roi(
            tuple(o - h for o, h in zip(self.offset, halo)),  # type: ignore[arg-type]
            tuple(s + 2 * h for s, h in zip(self.shape, halo)),  # type: ignore[arg-type]
        )

    def intersect(self, other: "Roi") -> "Roi":
        start = tuple(max(a, b) for a, b in zip(self.offset, other.offset))
        end = tuple(min(a, b) for a, b in zip(self.end, other.end))
        return Roi(start, tuple(max(0, e - s) for s, e in zip(start, end)))  # type: ignore[arg-type]

    def relative_to(self, outer: "Roi") -> tuple[slice, slice, slice]:
        """Slices that cut this ROI out of an array holding ``outer``."""
        if any(o < p or e > q for o, p, e, q in zip(self.offset, outer.offset, self.end, outer.end)):
            raise ValueError(f"{self} is not inside {outer}")
        return tuple(
            slice(o - p, o - p + s) for o, p, s in zip(self.offset, outer.offset, self.shape)
        )  # type: ignore[return-value]

    def to_nm(self, voxel_size: Sequence[float], origin_nm: Sequence[float] = (0, 0, 0)) -> dict:
        return {
            "offset_nm": [o * v + g for o, v, g in zip(self.offset, voxel_size, origin_nm)],
            "shape_nm": [s * v for s, v in zip(self.shape, voxel_size)],
        }


@dataclass(frozen=True)
class Block:
    """One block of a grid: grid index, the ROI it writes and the ROI it reads."""

    index: tuple[int, int, int]
    write: Roi
    read: Roi

    @property
    def id(self) -> str:
        return block_id(self.index)

    @property
    def write_in_read(self) -> tuple[slice, slice, slice]:
        """Slices that crop the write ROI out of an array holding the read ROI."""
        return self.write.relative_to(self.read)


def block_id(index: Sequence[int]) -> str:
    i, j, k = _triple(index, "block index")
    return f"z{i}_y{j}_x{k}"


def parse_block_id(text: str) -> tuple[int, int, int]:
    """``'z1_y0_x2'`` -> ``(1, 0, 2)``; a clear error for anything else."""
    match = _BLOCK_ID.match(text)
    if not match:
        raise ValueError(f"bad block id {text!r}: expected the form z<i>_y<j>_x<k>, e.g. z0_y1_x2")
    return tuple(int(g) for g in match.groups())  # type: ignore[return-value]


class BlockGrid:
    """A grid of blocks over a volume.

    ``block_shape`` must be a multiple of ``chunk_shape`` (when given) so that write ROIs are aligned to storage
    chunks and no two blocks ever write into the same chunk. ``halo`` is the per-stage context added to read ROIs;
    it may exceed the volume (read ROIs are clipped).
    """

    def __init__(
        self,
        volume_shape: Sequence[int],
        block_shape: Sequence[int],
        halo: Sequence[int] = (0, 0, 0),
        chunk_shape: Sequence[int] | None = None,
    ):
        self.volume_shape = _triple(volume_shape, "volume_shape")
        self.block_shape = _triple(block_shape, "block_shape")
        self.halo = _triple(halo, "halo")
        if any(s <= 0 for s in self.volume_shape):
            raise ValueError(f"volume_shape must be positive, got {self.volume_shape}")
        if any(b <= 0 for b in self.block_shape):
            raise ValueError(f"block_shape must be positive, got {self.block_shape}")
        if any(h < 0 for h in self.halo):
            raise ValueError(f"halo must be >= 0, got {self.halo}")
        if chunk_shape is not None:
            self.chunk_shape = _triple(chunk_shape, "chunk_shape")
            bad = [b for b, c in zip(self.block_shape, self.chunk_shape) if c <= 0 or b % c]
            if bad:
                raise ValueError(
                    f"block_shape {self.block_shape} must be a multiple of the storage chunk shape "
                    f"{self.chunk_shape} so that blocks never share a chunk"
                )
        else:
            self.chunk_shape = None
        self.volume = Roi((0, 0, 0), self.volume_shape)
        self.grid_shape: tuple[int, int, int] = tuple(
            -(-v // b) for v, b in zip(self.volume_shape, self.block_shape)
        )  # type: ignore[assignment]

    def __len__(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1] * self.grid_shape[2]

    def __iter__(self) -> Iterator[Block]:
        for index in itertools.product(*(range(n) for n in self.grid_shape)):
            yield self.block(index)

    def __repr__(self) -> str:
        return (
            f"BlockGrid(volume_shape={self.volume_shape}, block_shape={self.block_shape}, "
            f"halo={self.halo}, grid_shape={self.grid_shape})"
        )

    def ids(self) -> list[str]:
        return [block_id(index) for index in itertools.product(*(range(n) for n in self.grid_shape))]

    def block(self, index: Sequence[int] | str) -> Block:
        if isinstance(index, str):
            index = parse_block_id(index)
        index = _triple(index, "block index")
        if any(not 0 <= i < n for i, n in zip(index, self.grid_shape)):
            raise ValueError(f"block {block_id(index)} is outside the grid {self.grid_shape}")
        offset = tuple(i * b for i, b in zip(index, self.block_shape))
        write = Roi(offset, self.block_shape).intersect(self.volume)  # type: ignore[arg-type]
        read = write.grow(self.halo).intersect(self.volume)
        return Block(index, write, read)

    def read_voxels(self, first: Sequence[int], last: Sequence[int]) -> tuple[int, int]:
        """(largest, total) read-ROI voxels over the blocks from grid index ``first`` to ``last`` (inclusive).

        Read ROIs are products of per-axis extents, so a brick's total is the product of per-axis sums and no
        block is built (the resource requests of batch jobs, computed once per job while Snakemake plans).
        """
        first, last = _triple(first, "first block index"), _triple(last, "last block index")
        largest, total = 1, 1
        for axis in range(3):
            a, b, n = first[axis], last[axis], self.grid_shape[axis]
            if not 0 <= a <= b < n:
                raise ValueError(
                    f"block range {block_id(first)}..{block_id(last)} is outside the grid {self.grid_shape}"
                )
            size, halo, volume = self.block_shape[axis], self.halo[axis], self.volume_shape[axis]
            extents = [
                min(volume, min((i + 1) * size, volume) + halo) - max(0, i * size - halo) for i in range(a, b + 1)
            ]
            largest *= max(extents)
            total *= sum(extents)
        return largest, total

    def brick_read_roi(self, first: Sequence[int], last: Sequence[int]) -> Roi:
        """The read ROI of the brick of blocks from grid index ``first`` to ``last`` (inclusive): the union of its
        blocks' read ROIs. With the brick and the block shape it fixes every block's write and read ROI (clipping
        at the volume's end included), so it tells whether a block's result can change when the volume grows."""
        first, last = _triple(first, "first block index"), _triple(last, "last block index")
        lo = self.block(first).read
        hi = self.block(last).read
        return Roi(lo.offset, tuple(e - o for o, e in zip(lo.offset, hi.end)))  # type: ignore[arg-type]

    def blocks_meeting(self, roi: Roi) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(first, last) grid index of the blocks whose write ROI meets ``roi`` (clipped to the volume)."""
        roi = roi.intersect(self.volume)
        if min(roi.shape) <= 0:
            raise ValueError(f"{roi} is outside the volume {self.volume_shape}")
        first = tuple(o // b for o, b in zip(roi.offset, self.block_shape))
        last = tuple((e - 1) // b for e, b in zip(roi.end, self.block_shape))
        return first, last  # type: ignore[return-value]

    def neighbors(self, block: Block) -> list[Block]:
        """Blocks sharing a face with ``block`` at a higher index (each face listed once over the grid)."""
        out = []
        for axis in range(3):
            index = list(block.index)
            index[axis] += 1
            if index[axis] < self.grid_shape[axis]:
                out.append(self.block(index))
        return out


_BATCH_ID = re.compile(r"^z(\d+)-(\d+)_y(\d+)-(\d+)_x(\d+)-(\d+)$")


def batch_id(first: Sequence[int], last: Sequence[int]) -> str:
    """Id of the brick of blocks from grid index ``first`` to ``last`` (both inclusive): ``z0-1_y2-3_x0-3``."""
    first, last = _triple(first, "first block index"), _triple(last, "last block index")
    return "_".join(f"{axis}{a}-{b}" for axis, a, b in zip("zyx", first, last))


def parse_batch_id(text: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``'z0-1_y2-3_x0-3'`` -> ((0, 2, 0), (1, 3, 3)); a clear error for anything else."""
    match = _BATCH_ID.match(text)
    if not match:
        raise ValueError(f"bad batch id {text!r}: expected z<first>-<last>_y<first>-<last>_x<first>-<last>, "
                         "e.g. z0-1_y0-3_x0-3")
    g = [int(v) for v in match.groups()]
    first, last = (g[0], g[2], g[4]), (g[1], g[3], g[5])
    if any(b < a for a, b in zip(first, last)):
        raise ValueError(f"bad batch id {text!r}: a range ends before it starts")
    return first, last  # type: ignore[return-value]


def batch_shape_for(grid_shape: Sequence[int], per_job="auto", max_jobs: int = 1000) -> tuple[int, int, int]:
    """Blocks (z, y, x) that one job of a blockwise step processes.

    ``per_job`` is a (z, y, x) brick of blocks (clipped to the grid), or ``"auto"``: the smallest brick, grown one
    block at a time along the axis that has the most bricks (x, then y, then z on ties), that cuts the grid into
    at most ``max_jobs`` bricks. Grids of at most ``max_jobs`` blocks get one block per job.
    """
    grid = _triple(grid_shape, "grid_shape")
    if per_job != "auto":
        shape = _triple(per_job, "blocks per job")
        if any(s <= 0 for s in shape):
            raise ValueError(f"blocks per job must be positive, got {shape}")
        return tuple(min(s, g) for s, g in zip(shape, grid))  # type: ignore[return-value]
    if int(max_jobs) < 1:
        raise ValueError(f"max_jobs must be >= 1, got {max_jobs}")
    shape = [1, 1, 1]
    while True:
        counts = [-(-g // s) for g, s in zip(grid, shape)]
        if counts[0] * counts[1] * counts[2] <= max_jobs:
            return tuple(shape)  # type: ignore[return-value]
        axis = max(range(3), key=lambda a: (counts[a], a))
        shape[axis] += 1


class BlockBatches:
    """A block grid cut into bricks of ``batch_shape`` blocks (edge bricks are smaller): one job per brick.

    Bricks start at multiples of ``batch_shape``; ids (:func:`batch_id`) name the block range, so the blocks of a
    brick follow from its id alone. Blocks of a brick are listed in C order.
    """

    def __init__(self, grid_shape: Sequence[int], batch_shape: Sequence[int]):
        self.grid_shape = _triple(grid_shape, "grid_shape")
        self.batch_shape = _triple(batch_shape, "batch_shape")
        if any(s <= 0 for s in self.batch_shape):
            raise ValueError(f"batch_shape must be positive, got {self.batch_shape}")
        self.shape: tuple[int, int, int] = tuple(
            -(-g // s) for g, s in zip(self.grid_shape, self.batch_shape)
        )  # type: ignore[assignment]

    def __len__(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def __repr__(self) -> str:
        return f"BlockBatches(grid_shape={self.grid_shape}, batch_shape={self.batch_shape}, shape={self.shape})"

    def _id(self, index: Sequence[int]) -> str:
        first = [i * s for i, s in zip(index, self.batch_shape)]
        last = [min(f + s, g) - 1 for f, s, g in zip(first, self.batch_shape, self.grid_shape)]
        return batch_id(first, last)

    def ids(self) -> list[str]:
        return [self._id(index) for index in itertools.product(*(range(n) for n in self.shape))]

    def _index(self, batch: str) -> tuple[int, int, int]:
        first, last = parse_batch_id(batch)
        index = tuple(f // s for f, s in zip(first, self.batch_shape))
        if any(not 0 <= i < n for i, n in zip(index, self.shape)) or self._id(index) != batch:
            raise ValueError(f"batch {batch} is not a brick of {self!r}")
        return index  # type: ignore[return-value]

    def blocks(self, batch: str) -> list[str]:
        """Block ids of a brick, in C order."""
        self._index(batch)
        first, last = parse_batch_id(batch)
        return [block_id(i) for i in itertools.product(*(range(a, b + 1) for a, b in zip(first, last)))]

    def covering(self, first: Sequence[int], last: Sequence[int]) -> list[str]:
        """Ids of the bricks holding any block from grid index ``first`` to ``last`` (inclusive), in C order."""
        first, last = _triple(first, "first block index"), _triple(last, "last block index")
        ranges = [range(a // s, b // s + 1) for a, b, s in zip(first, last, self.batch_shape)]
        return [self._id(index) for index in itertools.product(*ranges)]

    def lower_neighbours(self, batch: str) -> list[str]:
        """This brick and the bricks just below it along z, y and x: those holding every block that a block of
        this brick has just below it (the blocks whose output a step like segment rag reads)."""
        index = self._index(batch)
        out = [batch]
        for axis in range(3):
            if index[axis] > 0:
                lower = list(index)
                lower[axis] -= 1
                out.append(self._id(lower))
        return out


def atomic_write_parquet(table, path: str | os.PathLike) -> None:
    """Write a pandas table to ``path`` (Parquet, no index) via ``.{name}.tmp`` in the same folder and a rename:
    a killed job leaves the old file or none, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)


def atomic_write_json(path: str | os.PathLike, payload: dict) -> None:
    """Write JSON to ``path`` via a temp file in the same folder and an atomic rename.

    A killed job leaves either the old file or none, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=True, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_marker(path: str | os.PathLike, block: Block, **fields) -> None:
    """The per-block marker, written last: block id, ROIs and whatever the stage adds (counts, timings, checksums)."""
    payload = {
        "block": block.id,
        "write_offset": list(block.write.offset),
        "write_shape": list(block.write.shape),
        "read_offset": list(block.read.offset),
        "read_shape": list(block.read.shape),
    }
    payload.update(fields)
    atomic_write_json(path, payload)


def read_marker(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)
