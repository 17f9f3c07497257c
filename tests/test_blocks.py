import json
import os
from pathlib import Path

import numpy as np
import pytest

from connectomix.blocks import BlockGrid, Roi, atomic_write_json, block_id, parse_block_id, read_marker, write_marker


def test_block_ids_round_trip_and_bad_ids():
    assert block_id((1, 0, 12)) == "z1_y0_x12"
    assert parse_block_id("z1_y0_x12") == (1, 0, 12)
    for bad in ("z1_y0", "1_0_2", "z1_y0_x2 ", "zA_y0_x0"):
        with pytest.raises(ValueError, match="bad block id"):
            parse_block_id(bad)


def test_write_rois_tile_volume_exactly_when_not_divisible():
    grid = BlockGrid((10, 37, 50), (4, 16, 16), chunk_shape=(2, 8, 8))
    assert grid.grid_shape == (3, 3, 4)
    cover = np.zeros(grid.volume_shape, dtype=int)
    for block in grid:
        cover[block.write.slices] += 1
        assert all(o % c == 0 for o, c in zip(block.write.offset, (2, 8, 8))), "write ROI not chunk aligned"
    assert (cover == 1).all(), "every voxel must be written by exactly one block"
    edge = grid.block("z2_y2_x3")
    assert edge.write.offset == (8, 32, 48) and edge.write.shape == (2, 5, 2)


def test_read_roi_is_write_plus_halo_clipped():
    grid = BlockGrid((20, 100, 100), (10, 50, 50), halo=(2, 8, 8))
    inner = grid.block((1, 1, 0))
    assert inner.read.offset == (8, 42, 0)  # clipped at x = 0
    assert inner.read.end == (20, 100, 58)  # clipped at the far z and y faces
    data = np.arange(20 * 100 * 100).reshape(20, 100, 100)
    cropped = data[inner.read.slices][inner.write_in_read]
    assert np.array_equal(cropped, data[inner.write.slices])


def test_halo_larger_than_volume_reads_whole_volume():
    grid = BlockGrid((3, 20, 20), (2, 10, 10), halo=(5, 50, 50))
    for block in grid:
        assert block.read == Roi((0, 0, 0), (3, 20, 20))
        assert block.read.relative_to(block.read) == block.read.slices


def test_iteration_order_is_deterministic_c_order():
    grid = BlockGrid((4, 4, 4), (2, 2, 2))
    ids = [b.id for b in grid]
    assert ids == grid.ids()
    assert ids[:3] == ["z0_y0_x0", "z0_y0_x1", "z0_y1_x0"] and ids[-1] == "z1_y1_x1"
    assert len(ids) == len(grid) == 8


def test_neighbors_list_each_face_once():
    grid = BlockGrid((4, 4, 4), (2, 2, 2))
    faces = {(a.id, b.id) for a in grid for b in grid.neighbors(a)}
    assert len(faces) == 12  # a 2x2x2 grid has 12 internal faces


def test_block_shape_must_align_to_chunks_and_be_valid():
    with pytest.raises(ValueError, match="multiple of the storage chunk"):
        BlockGrid((10, 10, 10), (5, 5, 5), chunk_shape=(2, 5, 5))
    with pytest.raises(ValueError, match="positive"):
        BlockGrid((10, 0, 10), (5, 5, 5))
    with pytest.raises(ValueError, match="outside the grid"):
        BlockGrid((10, 10, 10), (5, 5, 5)).block("z2_y0_x0")


def test_marker_written_atomically(tmp_path):
    grid = BlockGrid((4, 4, 4), (2, 2, 2))
    path = tmp_path / "blocks" / "stage" / "z0_y0_x1.json"
    write_marker(path, grid.block("z0_y0_x1"), voxels=np.int64(8), seconds=0.5)
    marker = read_marker(path)
    assert marker["block"] == "z0_y0_x1" and marker["write_offset"] == [0, 0, 2] and marker["voxels"] == 8
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temp files left behind"


def test_atomic_write_keeps_old_file_when_serialization_fails(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


# --- batches: one job per brick of blocks ----------------------------------------------------------------------


def test_batch_ids_round_trip_and_bad_ids():
    from connectomix.blocks import batch_id, parse_batch_id

    assert batch_id((0, 2, 4), (1, 3, 7)) == "z0-1_y2-3_x4-7"
    assert parse_batch_id("z0-1_y2-3_x4-7") == ((0, 2, 4), (1, 3, 7))
    for bad in ("z0_y0_x0", "z1-0_y0-0_x0-0", "z0-1_y0-1", "zA-1_y0-0_x0-0"):
        with pytest.raises(ValueError, match="bad batch id"):
            parse_batch_id(bad)


@pytest.mark.parametrize("grid_shape, batch_shape", [((10, 10, 10), (1, 1, 1)), ((7, 5, 9), (2, 3, 4)),
                                                     ((3, 1, 2), (5, 5, 5)), ((16, 25, 25), (2, 2, 3))])
def test_batches_cover_every_block_exactly_once(grid_shape, batch_shape):
    import itertools

    from connectomix.blocks import BlockBatches

    batches = BlockBatches(grid_shape, batch_shape)
    listed = [b for batch in batches.ids() for b in batches.blocks(batch)]
    assert sorted(listed) == sorted(block_id(i) for i in itertools.product(*(range(n) for n in grid_shape)))
    assert len(listed) == len(set(listed))
    assert len(batches) == len(batches.ids())
    if batch_shape == (1, 1, 1):
        assert [b for batch in batches.ids() for b in batches.blocks(batch)] == BlockGrid(
            grid_shape, (1, 1, 1)).ids()


def _lower_neighbours(block: str) -> list[str]:
    """This block and the blocks just below it along z, y and x (whose fragments its RAG step reads)."""
    from connectomix.blocks import block_id, parse_block_id

    index = parse_block_id(block)
    out = [block]
    for axis in range(3):
        if index[axis] > 0:
            lower = list(index)
            lower[axis] -= 1
            out.append(block_id(lower))
    return out


def test_batch_lower_neighbours_hold_every_lower_neighbour_block():
    from connectomix.blocks import BlockBatches

    batches = BlockBatches((7, 5, 9), (2, 3, 4))
    owner = {b: batch for batch in batches.ids() for b in batches.blocks(batch)}
    for batch in batches.ids():
        needed = {owner[n] for b in batches.blocks(batch) for n in _lower_neighbours(b)}
        assert needed == set(batches.lower_neighbours(batch)), batch
    with pytest.raises(ValueError, match="not a brick"):
        batches.blocks("z1-2_y0-2_x0-3")  # misaligned
    with pytest.raises(ValueError, match="not a brick"):
        batches.blocks("z8-9_y0-2_x0-3")  # outside


def test_batch_shape_auto_keeps_jobs_under_the_limit():
    from connectomix.blocks import BlockBatches, batch_shape_for

    assert batch_shape_for((2, 2, 2)) == (1, 1, 1)
    assert batch_shape_for((10, 10, 10), max_jobs=1000) == (1, 1, 1)
    for grid in ((16, 25, 25), (40, 50, 50), (100, 100, 100), (1, 1, 5000), (1042, 652, 652)):
        shape = batch_shape_for(grid, max_jobs=1000)
        assert len(BlockBatches(grid, shape)) <= 1000
        assert len(BlockBatches(grid, shape)) > 250  # and not needlessly coarse: jobs stay near the limit
    assert batch_shape_for((10, 10, 10), per_job=(2, 20, 3)) == (2, 10, 3)  # clipped to the grid
    with pytest.raises(ValueError, match="positive"):
        batch_shape_for((10, 10, 10), per_job=(0, 1, 1))


def test_read_voxels_of_a_brick_equals_the_sum_over_its_blocks():
    import itertools

    grid = BlockGrid((100, 300, 250), (24, 64, 64), halo=(4, 32, 32))
    for first, last in [((0, 0, 0), (4, 4, 3)), ((1, 2, 0), (3, 4, 1)), ((4, 4, 3), (4, 4, 3))]:
        sizes = [grid.block(i).read.size for i in itertools.product(*(range(a, b + 1) for a, b in zip(first, last)))]
        assert grid.read_voxels(first, last) == (max(sizes), sum(sizes))
    with pytest.raises(ValueError, match="outside the grid"):
        grid.read_voxels((0, 0, 0), (5, 0, 0))


def test_brick_read_roi_and_the_blocks_it_meets():
    from connectomix.blocks import BlockBatches, BlockGrid, Roi

    grid = BlockGrid((16, 64, 320), (16, 64, 64), (4, 24, 24))
    roi = grid.brick_read_roi((0, 0, 1), (0, 0, 2))
    assert roi == Roi((0, 0, 40), (16, 64, 192 + 24 - 40))
    assert grid.blocks_meeting(roi) == ((0, 0, 0), (0, 0, 3))
    # the last block's read ROI is clipped at the volume's end: it grows when the volume does
    assert grid.brick_read_roi((0, 0, 4), (0, 0, 4)).end == (16, 64, 320)
    batches = BlockBatches(grid.grid_shape, (1, 1, 2))
    assert batches.covering((0, 0, 0), (0, 0, 3)) == ["z0-0_y0-0_x0-1", "z0-0_y0-0_x2-3"]
