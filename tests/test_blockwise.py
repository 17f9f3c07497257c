"""The one step protocol of the blockwise stages (connectomix.blockwise): the runner and the shared command line."""

import argparse
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from connectomix import blockwise, cli
from connectomix.blocks import read_marker

SHAPE = (4, 8, 12)


def _setup(volume, work_dir, params, block_shape, chunk_shape=None, marker_dir=None):
    record = blockwise.new_setup("toy", volume, work_dir, shape=SHAPE, block_shape=block_shape,
                                 chunk_shape=chunk_shape or (2, 4, 4), halo=(0, 1, 1), voxel_size=(40, 8, 8),
                                 offset_nm=(0, 0, 0), params=params, provenance={}, marker_dir=marker_dir)
    return blockwise.save_setup(record)


def _count(s, block, context):
    """A block step: fails on the blocks the params name; else writes its read ROI's size next to setup.json."""
    if block.id in s["params"].get("fail", []):
        raise RuntimeError(f"block {block.id} failed")
    (context / f"{block.id}.npy").parent.mkdir(exist_ok=True)
    np.save(context / f"{block.id}.npy", np.array(block.read.size))
    return {"read_voxels": block.read.size}


def _out_dir(s, options):
    return Path(s["work_dir"]) / "out"


def _batch(s, blocks, context):
    return [{"batch": [b.id for b in blocks]} for b in blocks]


def _finish(work_dir, summary=None):
    return {"blocks": len(blockwise.read_markers(blockwise.load_setup(work_dir), "count"))}


TOY = blockwise.Stage("toy", _setup, (blockwise.Step("count", _count, _out_dir),
                                      blockwise.Step("pairs", _batch, batched=True)), _finish, runtime=("batch_size",))


def test_the_runner_writes_each_marker_after_its_block_and_none_for_a_block_that_raises(tmp_path):
    work = tmp_path / "toy"
    s = _setup("v.zarr", work, {"fail": ["z0_y1_x0"]}, (2, 4, 4))
    assert s["blocks"] == 2 * 2 * 3 and s["marker_dir"] == str(tmp_path / "blocks")
    assert json.loads((work / "setup.json").read_text()) == s
    ids = blockwise.grid_of(s).ids()
    with pytest.raises(RuntimeError, match="z0_y1_x0 failed"):
        blockwise.run_blocks(TOY, work, ids[:5], "count")
    done = sorted(p.stem for p in (tmp_path / "blocks" / "toy_count").glob("*.json"))
    assert done == ids[:3]  # the blocks before the failing one, which has none (and nothing after it ran)
    marker = read_marker(tmp_path / "blocks" / "toy_count" / "z0_y0_x0.json")
    assert marker["read_voxels"] == 2 * 5 * 5 and marker["write_shape"] == [2, 4, 4]
    assert marker["seconds"] >= 0 and marker["peak_rss_mb"] > 0
    with pytest.raises(FileNotFoundError, match=r"9 of 12 blocks have no marker of `connectomix toy block --step "
                                                r"count`"):
        TOY.finish(work)
    # a bad block id fails before any block runs
    with pytest.raises(ValueError, match="outside the grid"):
        blockwise.run_blocks(TOY, work, ["z1_y1_x2", "z5_y0_x0"], "count")
    assert not (tmp_path / "blocks" / "toy_count" / "z1_y1_x2.json").exists()
    # batched steps get batch_size blocks at a time
    blockwise.run_blocks(TOY, work, ids[:3], "pairs", batch_size=2)
    assert read_marker(tmp_path / "blocks" / "toy_pairs" / f"{ids[2]}.json")["batch"] == [ids[2]]
    assert read_marker(tmp_path / "blocks" / "toy_pairs" / f"{ids[0]}.json")["batch"] == ids[:2]
    with pytest.raises(ValueError, match="no option"):
        blockwise.run_blocks(TOY, work, ids[:1], "count", threads=2)


def test_the_process_pool_runs_every_block_like_one_process(tmp_path):
    _setup("v.zarr", tmp_path / "a", {}, (2, 4, 4))
    _setup("v.zarr", tmp_path / "b", {}, (2, 4, 4), marker_dir=tmp_path / "other")
    serial = blockwise.run_step(TOY, tmp_path / "a", "count")
    pooled = blockwise.run_step(TOY, tmp_path / "b", "count", workers=2)
    assert sorted(v["read_voxels"] for v in serial) == sorted(v["read_voxels"] for v in pooled)
    assert TOY.finish(tmp_path / "b") == {"blocks": 12}


def test_a_missing_setup_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"nowhere/setup.json missing: run `connectomix toy setup"):
        blockwise.run_blocks(TOY, tmp_path / "nowhere", ["z0_y0_x0"], "count")
    for stage in ("predict", "segment", "synapses", "skeletonize"):
        assert cli.main([stage, "block", "--work-dir", str(tmp_path / "nowhere"), "--blocks", "z0_y0_x0",
                         *(["--step", "rag"] if stage == "segment" else [])]) == 1
        err = capsys.readouterr().err
        assert f"setup.json missing: run `connectomix {stage} setup" in err, err
    _setup("v.zarr", tmp_path / "toy", {}, (2, 4, 4))
    with pytest.raises(ValueError, match="setup of stage 'toy', not 'segment'"):
        blockwise.load_setup(tmp_path / "toy", "segment")


def _subcommands(stage: str) -> dict:
    module = importlib.import_module(cli.STAGES[stage][0])
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {opt for a in p._actions for opt in a.option_strings if opt != "-h" and opt != "--help"}
            for name, p in sub.choices.items()}


@pytest.mark.parametrize("stage", ["align", "predict", "segment", "synapses", "skeletonize"])
def test_every_blockwise_stage_has_the_same_verbs_and_arguments(stage):
    commands = _subcommands(stage)
    setup = {"--volume", "--work-dir", "--params", "--block-shape", "--chunk-shape", "--marker-dir"}
    extras = {"align": set(), "predict": {"--input", "--missing-affinities"}, "segment": set(),
              "synapses": {"--maps", "--segmentation", "--raw"}, "skeletonize": {"--array"}}[stage]
    assert commands["setup"] == setup | extras
    # the block step takes the work dir, the step and the blocks, and options that cannot change a result
    assert {"--work-dir", "--step", "--blocks"} <= commands["block"]
    assert commands["block"] - {"--work-dir", "--step", "--blocks"} <= {"--threads", "--device", "--batch-size"}
    assert {"--work-dir", "--summary"} <= commands["finish"]
    module = importlib.import_module(cli.STAGES[stage][0])
    assert module.STAGE.name == stage and commands["block"] - {"--work-dir", "--step", "--blocks"} == {
        f"--{name.replace('_', '-')}" for name in module.STAGE.runtime}


def test_marker_folders_keep_their_paths():
    assert blockwise.marker_folder("predict", "predict") == "predict"
    assert blockwise.marker_folder("segment", "relabel") == "segment_relabel"
