"""`connectomix plan`: job counts from the block grid, hours linear in voxels, clear errors, the 1 mm3 estimate."""

import json
from pathlib import Path

import pytest
import yaml

from connectomix import cli, plan
from connectomix.blocks import BlockBatches, BlockGrid, batch_shape_for

REPO = Path(__file__).resolve().parents[1]
VOXEL = (40, 8, 8)


def _by_key(result):
    return {f"{r['stage']}.{r['step']}": r for r in result["steps"]}


@pytest.mark.parametrize("shape", [(240, 1920, 1920), (250, 2000, 1000), (24, 192, 192), (7, 65, 900),
                                   (384, 4800, 4800)])
@pytest.mark.parametrize("per_job", ["auto", (1, 1, 1), (2, 3, 1)])
def test_job_counts_equal_the_block_grid_batches(shape, per_job):
    result = plan.make_plan(shape, VOXEL, block_shape=(24, 192, 192), chunk_shape=(8, 64, 64), per_job=per_job)
    grid = BlockGrid(shape, (24, 192, 192), chunk_shape=(8, 64, 64))
    batches = BlockBatches(grid.grid_shape, batch_shape_for(grid.grid_shape, per_job, 1000))
    assert result["grid"]["blocks"] == len(grid)
    assert result["grid"]["grid_shape"] == list(grid.grid_shape)
    assert result["grid"]["jobs_per_step"] == len(batches)
    if per_job == (1, 1, 1) or (per_job == "auto" and len(grid) <= 1000):
        assert len(batches) == len(grid)  # one block per job
    for row in result["steps"]:
        assert row["jobs"] == (len(batches) if row["scope"] == "block" else 1), row
    assert result["totals"]["jobs"] == sum(r["jobs"] for r in result["steps"]) + 1
    # the blockwise rules of the workflow are exactly the planner's per-block steps
    blockwise = {r["rule"] for r in result["steps"] if r["scope"] == "block"}
    assert blockwise == {"predict_block", "segment_fragments", "segment_rag", "segment_relabel", "skeletonize_block",
                         "mesh_block", "synapses_block"}
    for rule in blockwise:
        assert any(f"rule {rule}:" in p.read_text() for p in (REPO / "rules").glob("*.smk")), rule


def test_hours_and_storage_scale_linearly_with_voxels():
    small = plan.make_plan((240, 1920, 1920), VOXEL)
    double = plan.make_plan((240, 1920, 3840), VOXEL)
    a, b = _by_key(small), _by_key(double)
    measured = [k for k, r in a.items() if r["cpu_core_hours"] is not None]
    assert {"predict.block", "segment.fragments", "segment.agglomerate"} <= set(measured)
    for key in measured:
        assert b[key]["cpu_core_hours"] == pytest.approx(2 * a[key]["cpu_core_hours"], rel=1e-12)
    assert double["totals"]["cpu_core_hours_measured_steps"] == pytest.approx(
        2 * small["totals"]["cpu_core_hours_measured_steps"])
    assert double["totals"]["storage_bytes_uncompressed"] == pytest.approx(
        2 * small["totals"]["storage_bytes_uncompressed"])
    # and they are voxels / rate
    rate = plan.load_rates()["steps"]["predict.block"]["cpu_voxels_per_core_second"]
    assert a["predict.block"]["cpu_core_hours"] == pytest.approx(240 * 1920 * 1920 / rate / 3600)


def test_skeleton_blocks_are_planned_by_the_voxels_they_read():
    """The skeletonize block rate was measured at the benchmark's blocks and halo; a plan with other blocks scales
    it by the voxels read per voxel owned (the halo's share), which the block time follows."""
    entry = plan.load_rates()["steps"]["skeletonize.block"]
    assert entry["read_per_write_voxel"] > 1 and len(entry["halo"]) == 3
    assert plan.read_per_write((24, 192, 192), (4, 32, 32)) == pytest.approx(32 * 256 * 256 / (24 * 192 * 192))
    shape = (240, 1920, 1920)
    rows = {b: _by_key(plan.make_plan(shape, VOXEL, block_shape=b)) for b in ((24, 192, 192), (48, 256, 256))}
    small, large = (rows[b]["skeletonize.block"] for b in rows)
    expected = {b: plan.read_per_write(b, entry["halo"]) / entry["read_per_write_voxel"] for b in rows}
    assert small["halo_scale"] == pytest.approx(expected[(24, 192, 192)])
    assert small["cpu_core_hours"] == pytest.approx(
        240 * 1920 * 1920 * expected[(24, 192, 192)] / entry["cpu_voxels_per_core_second"] / 3600)
    assert large["cpu_core_hours"] / small["cpu_core_hours"] == pytest.approx(
        expected[(48, 256, 256)] / expected[(24, 192, 192)])
    assert large["cpu_core_hours"] < small["cpu_core_hours"]
    # steps measured without a halo ratio are planned by voxels owned, whatever the blocks
    assert rows[(24, 192, 192)]["segment.rag"]["halo_scale"] is None
    rag = [rows[b]["segment.rag"]["cpu_core_hours"] for b in rows]
    assert rag[0] == rag[1]


def test_test_time_augmentation_multiplies_the_predict_hours(tmp_path):
    """predict.augment 'in-plane' runs 8 network passes per tile (4 with unequal y and x voxels): a plan from such
    a config multiplies the predict block hours by them and leaves every other step alone."""
    shape = (240, 1920, 1920)
    one, eight = (_by_key(plan.make_plan(shape, VOXEL, predict_passes=n)) for n in (1, 8))
    assert eight["predict.block"]["cpu_core_hours"] == pytest.approx(8 * one["predict.block"]["cpu_core_hours"])
    assert eight["segment.fragments"]["cpu_core_hours"] == one["segment.fragments"]["cpu_core_hours"]
    assert "x8: predict.augment" in plan.render(plan.make_plan(shape, VOXEL, predict_passes=8))
    outputs = {}
    for augment, voxel in (("none", VOXEL), ("in-plane", VOXEL), ("in-plane", (40, 8, 10))):
        config = tmp_path / f"{augment}.yaml"
        config.write_text(yaml.safe_dump({"datasets": {"d": {"voxel_size": list(voxel), "phantom": {}}},
                                          "predict": {"augment": augment}}))
        out = tmp_path / f"{augment}-{voxel[2]}.json"
        assert cli.main(["plan", "--shape", *map(str, shape), "--voxel-size", *map(str, voxel), "--config",
                         str(config), "--json", str(out)]) == 0
        outputs[augment, voxel[2]] = _by_key(json.loads(out.read_text()))["predict.block"]["cpu_core_hours"]
    assert outputs["in-plane", 8] == pytest.approx(8 * outputs["none", 8])
    assert outputs["in-plane", 10] == pytest.approx(4 * outputs["none", 8])  # same voxels, 4 passes


def test_storage_counts_dtype_channels_and_pyramid():
    result = plan.make_plan((24, 192, 192), VOXEL)
    arrays = {a["array"]: a for a in result["storage"]}
    voxels = 24 * 192 * 192
    pyramid = 1 + 1 / 4 + 1 / 16  # default: 3 levels, factor (1, 2, 2)
    assert arrays["raw"]["bytes_uncompressed"] == pytest.approx(voxels * 1 * pyramid)
    assert arrays["affinities"]["bytes_uncompressed"] == pytest.approx(voxels * 3 * pyramid)
    assert arrays["synapse_maps"]["bytes_uncompressed"] == pytest.approx(voxels * 3 * pyramid)
    assert arrays["fragments"]["bytes_uncompressed"] == pytest.approx(voxels * 8)
    assert arrays["segmentation"]["bytes_uncompressed"] == pytest.approx(voxels * 8 * pyramid)


def test_size_um_gives_the_voxel_shape():
    assert plan.shape_from_size((1000, 1000, 1000), (40, 8, 8)) == (25000, 125000, 125000)
    assert plan.shape_from_size((1, 1, 1), (40, 8, 8)) == (25, 125, 125)
    assert plan.shape_from_size((1.01, 1, 1), (40, 8, 8)) == (26, 125, 125)  # rounded up


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shape", "100", "-5", "100", "--voxel-size", "40", "8", "8"], "-5"),
        (["--shape", "100", "0", "100", "--voxel-size", "40", "8", "8"], "--shape must be positive"),
        (["--shape", "100", "10.5", "100", "--voxel-size", "40", "8", "8"], "10.5"),
        (["--shape", "100", "100", "100", "--voxel-size", "40", "-8", "8"], "--voxel-size must be positive"),
        (["--size-um", "10", "-1", "10", "--voxel-size", "40", "8", "8"], "--size-um must be positive"),
        (["--shape", "100", "100", "100"], "--voxel-size"),
        (["--voxel-size", "40", "8", "8"], "--shape Z Y X"),
        (["--shape", "96", "960", "960", "--voxel-size", "40", "8", "8", "--block-shape", "24", "100", "100"],
         "multiple of the storage chunk shape"),
    ],
)
def test_bad_inputs_name_the_value(argv, message, capsys):
    assert cli.main(["plan", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("connectomix plan: error:"), err
    assert message in err, err


def _rates_copy(tmp_path, edit):
    rates = yaml.safe_load(plan.default_rates_path().read_text())
    edit(rates)
    path = tmp_path / "rates.yaml"
    path.write_text(yaml.safe_dump(rates))
    return path


def test_missing_rate_names_the_step_and_file(tmp_path, capsys):
    path = _rates_copy(tmp_path, lambda r: r["steps"].pop("segment.rag"))
    with pytest.raises(ValueError, match=r"no rate for step 'segment\.rag'"):
        plan.load_rates(path)
    assert cli.main(["plan", "--shape", "96", "960", "960", "--voxel-size", "40", "8", "8", "--rates", str(path)]) == 1
    err = capsys.readouterr().err
    assert "segment.rag" in err and str(path) in err


def test_bad_rate_values_are_named(tmp_path):
    path = _rates_copy(tmp_path, lambda r: r["steps"]["segment.fragments"].update(cpu_voxels_per_core_second=-3))
    with pytest.raises(ValueError, match=r"steps\.segment\.fragments\.cpu_voxels_per_core_second.*-3"):
        plan.load_rates(path)
    path = _rates_copy(tmp_path, lambda r: r["steps"]["ingest.ingest"].pop("reason"))
    with pytest.raises(ValueError, match=r"ingest\.ingest\.cpu_voxels_per_core_second is null.*reason"):
        plan.load_rates(path)
    path = _rates_copy(tmp_path, lambda r: r["steps"]["predict.block"].pop("gpu_voxels_per_second"))
    with pytest.raises(ValueError, match=r"predict\.block lacks 'gpu_voxels_per_second'"):
        plan.load_rates(path)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        plan.load_rates(tmp_path / "nope.yaml")


def test_unmeasured_steps_are_na_not_invented():
    result = plan.make_plan((240, 1920, 1920), VOXEL)
    rows = _by_key(result)
    rates = plan.load_rates()
    for key, row in rows.items():
        entry = rates["steps"][key]
        if entry["cpu_voxels_per_core_second"] is None:
            assert row["cpu_core_hours"] is None and row["reason"]
            assert key in result["totals"]["steps_without_cpu_rate"]
    assert rows["predict.block"]["gpu_hours"] is None  # no GPU was measured
    assert "predict.block" in result["totals"]["steps_without_gpu_rate"]


def test_shipped_rates_cite_existing_benchmark_files_and_match_them():
    rates = plan.load_rates()
    assert isinstance(rates["version"], int) and rates["measured_on"]["machine"] and rates["measured_on"]["date"]
    from connectomix import config as cmx_config

    defaults = cmx_config.validate({"datasets": {"d": {"voxel_size": [40, 8, 8], "phantom": {}}}})
    derived = plan.derive_rates(REPO / "benchmarks" / "results", defaults)
    derived.pop("__planning__", None)
    for key, entry in rates["steps"].items():
        if entry["cpu_voxels_per_core_second"] is None:
            continue
        assert (REPO / entry["source"]).exists(), f"{key}: {entry['source']} does not exist"
        assert key in derived, f"{key} is not derived from the benchmark results (refresh the rates file)"
        assert entry["cpu_voxels_per_core_second"] == derived[key]["cpu_voxels_per_core_second"], key
    assert len(rates["references"]) >= 3
    for ref in rates["references"]:
        assert ref["citation"] and ref["url"].startswith("https://")


def test_rates_file_is_package_data():
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["connectomix"]
    assert "data/**/*" in data or "data/*.yaml" in data
    assert plan.default_rates_path().is_file()


def test_the_cubic_millimetre_estimate_prints(tmp_path, capsys):
    out_json = tmp_path / "plan.json"
    argv = ["plan", "--size-um", "1000", "1000", "1000", "--voxel-size", "40", "8", "8", "--json", str(out_json)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "25000 x 125000 x 125000 voxels" in text and "= 1 mm3" in text
    assert "1042 x 652 x 652 = 442,958,368 blocks" in text
    assert "Jobs per blockwise step: 1,000, each a brick of 105 x 66 x 66" in text
    for stage in ("ingest", "predict", "segment", "skeletonize", "synapses", "connectome", "export"):
        assert f"\n{stage} " in text
    assert "CPU core-hours (measured steps only, a lower bound)" in text
    assert "Published figures" in text and "doi:10.1038/s41586-025-08790-w" in text
    saved = json.loads(out_json.read_text())
    assert saved["volume"]["voxels"] == 25000 * 125000 * 125000
    assert saved["grid"]["blocks"] == 1042 * 652 * 652


def test_refresh_keeps_hand_written_parts(tmp_path):
    out = tmp_path / "rates.yaml"
    plan.refresh_rates(plan.default_rates_path(), REPO / "benchmarks" / "results", None, out)
    new = yaml.safe_load(out.read_text())
    old = plan.load_rates()
    assert new["references"] == old["references"]
    assert new["steps"]["ingest.ingest"]["reason"] == old["steps"]["ingest.ingest"]["reason"]
    assert new["steps"]["predict.block"]["cpu_voxels_per_core_second"] == old["steps"]["predict.block"][
        "cpu_voxels_per_core_second"]
    plan.load_rates(out)  # still a valid rates file


@pytest.mark.parametrize("blocks", [{"per_job": [2, 2, 2]}, {"max_jobs": 5}])
def test_plan_job_counts_match_a_snakemake_dry_run(tmp_path, blocks):
    """The planner's jobs per rule are the ones Snakemake schedules for a source dataset (batches included)."""
    import subprocess
    import sys

    import zarr

    shape = (3 * 24, 4 * 192, 5 * 192 - 64)  # 3 x 4 x 5 blocks, the last x block partial
    # metadata only: no chunk is written
    zarr.create_array(str(tmp_path / "source.zarr"), shape=shape, chunks=(8, 64, 64), dtype="uint8", fill_value=0,
                      zarr_format=2)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["datasets"] = {"big": {"voxel_size": list(VOXEL),
                                  "source": {"path": str(tmp_path / "source.zarr"), "format": "zarr"}}}
    config["blocks"].update(blocks)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), "-n", "--quiet", "rules", "--snakefile",
         str(REPO / "Snakefile"), "--directory", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    expected = plan.make_plan(shape, VOXEL, per_job=blocks.get("per_job", "auto"), max_jobs=blocks.get("max_jobs"))
    assert expected["grid"]["jobs_per_step"] == (12 if "per_job" in blocks else 4)
    for row in expected["steps"]:
        assert counts.get(row["rule"]) == row["jobs"], (row["rule"], counts)
    assert counts["total"] == expected["totals"]["jobs"]
