"""The workflow house: CLI, config schema, Snakemake lint and dry-run plans, env pins."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from connectomix import cli
from connectomix import config as cmx_config
from connectomix.envs import lock_pins

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def test_cli_lists_every_stage_and_each_has_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listing = capsys.readouterr().out
    for name in cli.STAGES:
        assert name in listing
    available = [n for n, (m, _) in cli.STAGES.items() if _module_exists(m)]
    assert {"phantom", "ingest", "pyramid", "check-config"} <= set(available)
    for name in available:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: connectomix " + name in capsys.readouterr().out


def _module_exists(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_default_config_is_valid_and_defaults_filled():
    config = cmx_config.load(REPO / "config.yaml")
    assert config["storage"]["chunk_shape"] == [8, 64, 64]
    assert config["datasets"]["phantom"]["offset_nm"] == [0, 0, 0]


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"blocks": {"shape": [24, 100, 100]}}, "multiple of storage.chunk_shape"),
        ({"datasets": {"d": {"voxel_size": [40, 8]}}}, "datasets/d/voxel_size"),
        ({"datasets": {"d": {"voxel_size": [40, 8, 8]}}}, "dataset 'd' must have exactly one of"),
        ({"datasets": {"d": {"voxel_size": [40, 8, 8], "phantom": {}, "source": {"path": "x"}}}}, "exactly one"),
        ({"pyramid": {"levels": 0}}, "pyramid/levels"),
        ({"bogus": 1}, "bogus"),
        ({"train": {"dataset": "nope"}}, r"train\.dataset names dataset 'nope', which is not in datasets"),
        ({"segment": {"evaluation": {"ground_truth": {"phantm": {"path": "gt.h5"}}}}},
         r"segment\.evaluation\.ground_truth names dataset 'phantm'"),
        ({"synapses": {"evaluation": {"ground_truth": {"nope": {"path": "c.h5"}}}}},
         r"synapses\.evaluation\.ground_truth names dataset 'nope'"),
        ({"coregister": {"functional": {"nope": {"nwb": "f.nwb"}}}}, r"coregister\.functional names dataset 'nope'"),
        ({"datasets": {"phantom": {"voxel_size": [40, 8, 8], "phantom": {"shape": [16, 64, 64], "n_neurons": 40}}}},
         r"datasets\.phantom\.phantom: cannot place 40 non-overlapping somata"),
    ],
)
def test_bad_config_names_the_key(patch, message):
    config = {"datasets": {"phantom": {"voxel_size": [40, 8, 8], "phantom": {}}}}
    config.update(patch)
    with pytest.raises(ValueError, match=message):
        cmx_config.validate(config)


def test_schema_documents_every_property():
    missing = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                if isinstance(sub, dict) and "description" not in sub and "$ref" not in sub:
                    missing.append(f"{path}.{key}")
                walk(sub, f"{path}.{key}")
            for key in ("additionalProperties", "items"):
                if isinstance(node.get(key), dict):
                    walk(node[key], path + "[*]")
            for key, sub in node.get("$defs", {}).items():
                walk(sub, f"$defs.{key}")

    walk(cmx_config.schema(), "config")
    assert not missing, f"schema keys without a description: {missing}"


def test_defaults_come_from_the_schema():
    root = cmx_config.schema()["properties"]
    seg = cmx_config.defaults("segment")
    assert seg["fragments"]["seed_window"] == root["segment"]["properties"]["fragments"]["properties"][
        "seed_window"]["default"]
    train_model = root["train"]["properties"]["model"]["properties"]
    assert cmx_config.defaults("train")["model"]["kernel_sizes"] == train_model["kernel_sizes"]["default"]
    seg["fragments"]["seed_window"].append(99)  # a copy: the next caller gets the schema's value
    assert cmx_config.defaults("segment")["fragments"]["seed_window"] == [1, 7, 7]
    filled = cmx_config.validate({"datasets": {"p": {"voxel_size": [40, 8, 8], "phantom": {}}}})
    for section in root:
        if section != "datasets":
            assert cmx_config.defaults(section) == filled[section], section


def test_resolve_merges_over_the_defaults_and_names_an_unknown_key():
    params = cmx_config.resolve("segment", {"fragments": {"min_size": 4}, "evaluation": {"ground_truth": {"x": 1}}})
    assert params["fragments"]["min_size"] == 4
    assert params["fragments"]["threshold"] == cmx_config.defaults("segment")["fragments"]["threshold"]
    assert params["evaluation"]["ground_truth"] == {"x": 1}  # free-form in the schema: taken whole
    with pytest.raises(ValueError, match=r"unknown parameter synapses\.evaluation\.bogus \(known: ground_truth"):
        cmx_config.resolve("synapses", {"evaluation": {"bogus": 1}})
    with pytest.raises(ValueError, match=r"unknown parameter connectome\.soma"):
        cmx_config.resolve("connectome", {"soma": 1})
    assert "functional" not in cmx_config.resolve("coregister", {"functional": {}}, omit=("functional",))


def test_no_module_defines_its_own_defaults():
    """Defaults are written once, in the schema (connectomix.config.defaults reads them)."""
    import ast

    found = []
    for path in sorted((REPO / "src" / "connectomix").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Name) and "DEFAULT" in target.id.upper() and isinstance(
                        node.value, (ast.Dict, ast.Call)):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {target.id}")
    assert not found, f"module-level defaults outside the schema: {found}"


def _snakemake(*args, cwd=REPO, timeout=240):
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_snakemake_lint_is_clean():
    result = _snakemake("--lint")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Lints for" not in output, output


def test_dry_run_plans_the_full_dag(tmp_path):
    result = _snakemake("-n", "--quiet", "rules", "--directory", str(REPO), "--config", f"results_dir={tmp_path}/results")
    assert result.returncode == 0, result.stderr
    assert "phantom" in result.stdout


def test_a_config_file_replaces_the_default_config(tmp_path):
    """`--configfile` runs that config alone: a real-data config must not inherit the phantom dataset or its
    phantom-scaled settings from config.yaml (`--config` overrides still apply to config.yaml)."""
    own = {"results_dir": f"{tmp_path}/results",
           "datasets": {"only": {"voxel_size": [40, 8, 8], "phantom": {"seed": 3}}}}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(own))
    result = _snakemake("-n", "--directory", str(REPO), "--configfile", str(tmp_path / "own.yaml"))
    assert result.returncode == 0, result.stderr
    assert "results/only/" in result.stdout and "results/phantom/" not in result.stdout


def test_functional_data_as_one_nwb_file_feeds_coregister_and_analysis(tmp_path):
    """`coregister.functional.D: {nwb: F}` hands the one file to the jobs as ROIs, responses and stimuli (the
    loader reads all three from it) and makes the jobs wait for that file."""
    nwb = tmp_path / "session.nwb"
    nwb.write_bytes(b"")  # the dry run needs the input to exist, not to be readable
    own = {"results_dir": f"{tmp_path}/results",
           "datasets": {"only": {"voxel_size": [40, 8, 8], "phantom": {"seed": 3}}},
           "coregister": {"functional": {"only": {"nwb": str(nwb)}}}}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(own))
    result = _snakemake("-n", "-p", "--directory", str(REPO), "--configfile", str(tmp_path / "own.yaml"))
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if "connectomix coregister " in line
                or "connectomix analysis " in line]
    assert len(commands) >= 2, result.stdout[-3000:]
    for line in commands:
        assert f"--rois {nwb} --responses {nwb} --stimuli {nwb}" in line, line


def test_env_file_pins_exactly_the_lock():
    env = yaml.safe_load((REPO / "envs" / "connectomix.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert [p for p in pip if not p.startswith("--")] == lock_pins(REPO / "requirements.lock")
    assert "python=3.11" in env["dependencies"]


def test_every_rule_declares_conda_threads_and_resources():
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        for block in text.split("\nrule ")[1:]:
            name = block.split(":")[0]
            if "shell:" not in block and "script:" not in block:
                continue
            for key in ("conda:", "threads:", "resources:", "log:"):
                assert key in block, f"{smk.name}: rule {name} lacks {key}"


# --- connectomix.workflow: the workflow's glue, without Snakemake ----------------------------------------------

TINY_PHANTOM = {"seed": 3, "shape": [16, 128, 128], "n_neurons": 6, "n_synapses": 8, "n_orphan_synapses": 8,
                "soma_radius_nm": 170.0, "dendrite_length_nm": 700.0, "axon_length_nm": 1500.0}


def _workflow(**overrides):
    """A Workflow on a phantom and a real dataset with segmentation and cleft ground truth (no file is read)."""
    from connectomix.workflow import Workflow
    from connectomix.workflow.predict import locate_shipped_models

    raw = {"voxel_size": [40, 8, 8], "source": {"path": "em dir/raw.h5", "key": "raw"},
           "roi": {"offset": [0, 2, 3], "shape": [16, 100, 100]}}
    config = {"results_dir": "out dir", "datasets": {"ph": {"voxel_size": [40, 8, 8], "phantom": TINY_PHANTOM},
                                                    "real": raw},
              "segment": {"evaluation": {"ground_truth": {"real": {"path": "gt.h5", "key": "labels"}}}},
              "synapses": {"evaluation": {"ground_truth": {"real": {"path": "clefts.h5", "key": "c"}}}},
              "storage": {"chunk_shape": [8, 64, 64]}, "blocks": {"shape": [16, 64, 64]}, **overrides}
    cfg = cmx_config.validate(config)
    locate_shipped_models(cfg, REPO)
    return Workflow(cfg)


def test_paths_are_the_documented_layout():
    from connectomix.workflow import Paths

    paths = Paths("results")
    assert paths.volume() == "results/{dataset}/volume.zarr"
    assert paths.array("raw", "ph") == "results/ph/volume.zarr/raw"
    assert paths.batch_marker("segment_rag") == "results/{dataset}/blocks/segment_rag/batches/{batch}.json"
    assert paths.setup("predict", "ph") == "results/ph/predict/setup.json"
    assert paths.table("segments", "ph") == "results/ph/segments.parquet"
    assert paths.eval("clefts", "ph") == "results/ph/eval/clefts.json"
    assert paths.metrics("ph") == "results/ph/eval/metrics.json"
    assert paths.log("predict/{batch}") == "results/{dataset}/logs/predict/{batch}.log"
    assert paths.raw_done(True, "ph") == "results/ph/gt/phantom.json"
    assert paths.raw_done(False, "ph") == "results/ph/ingest.json"
    assert paths.model_dir("ph") == "results/models/ph"
    contracts = (REPO / "docs" / "data-contracts.md").read_text()
    for documented in ("blocks/{stage}/batches/{batch}.json", "eval/metrics.json", "volume.zarr", "gt/phantom.json"):
        assert documented in contracts


def test_targets_follow_each_dataset_and_its_ground_truth():
    from connectomix.workflow import targets

    wf = _workflow()
    groups = targets.dataset_groups(wf)
    assert groups["phantom"] == groups["functional"] == groups["functional_phantom"] == ["ph"]
    assert groups["source"] == groups["cleft_eval"] == ["real"]
    assert groups["segment_eval"] == ["ph", "real"]
    assert [Path(p).name for p in targets.eval_targets(wf, "real")] == ["segmentation.json", "clefts.json"]
    assert [Path(p).stem for p in targets.eval_targets(wf, "ph")] == [
        "segmentation", "skeletons", "synapses", "connectome", "coregister", "celltypes", "like_to_like"]
    real = targets.final_targets(wf, "real")
    assert real[0] == "out dir/real/ingest.json" and "out dir/real/eval/metrics.json" in real
    assert not any("matches" in p or "analysis" in p for p in real)
    assert "out dir/ph/analysis/summary.html" in targets.final_targets(wf, "ph")
    # ground truth as input files and shell-quoted arguments, cropped from the dataset's ROI offset
    assert targets.segmentation_gt(wf, "ph") == (["out dir/ph/gt/phantom.json"], "--gt-array gt/labels")
    files, args = targets.segmentation_gt(wf, "real")
    assert files == ["gt.h5"] and args.startswith("--gt-file gt.h5 --gt-format auto --gt-key labels --gt-roi-offset 0 2 3")
    assert targets.clefts_gt(wf, "real")[1].endswith("--gt-key c --gt-roi-offset 0 2 3")
    assert targets.functional_files(wf)["ph"]["responses"] == "out dir/ph/gt/functional/responses.npy"
    assert targets.functional_inputs(wf, "ph") == ["out dir/ph/gt/phantom.json"]


def _rule_names():
    names = set()
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        names |= set(re.findall(r"^(?:rule|checkpoint) (\w+):", text, flags=re.M))
        assert "mem_mb=" not in text, f"{smk.name}: resources come from connectomix.workflow.resources"
    return names


def test_every_rule_has_its_costs_in_the_package():
    from connectomix.workflow.resources import COSTS

    assert set(COSTS) == _rule_names()


def test_resources_scale_with_the_block_shape_and_the_stage_halo():
    from types import SimpleNamespace

    from connectomix.workflow.resources import job_resources, rule_resources

    wf = _workflow()
    job = SimpleNamespace(dataset="ph", batch="z0-0_y0-0_x0-0")
    # a batch's memory follows its largest block read ROI: the write ROI grown by the stage's halo
    halo = wf.halo("segment", "ph")
    largest, total = wf.batch_read_voxels("ph", job.batch, halo)
    assert largest == total == wf.grid("ph", halo).block((0, 0, 0)).read.size > 16 * 64 * 64
    low = {"resources": {"min_mem_mb": 1, "min_runtime_min": 1}}
    assert rule_resources(_workflow(**low), "segment_fragments")["mem_mb"](job) == job_resources(
        largest, {"resources": {**wf.cfg["resources"], **low["resources"]}})["mem_mb"]
    for rule in ("segment_fragments", "skeletonize_block", "predict_block", "synapses_stitch", "ingest"):
        one = rule_resources(_workflow(**low), rule)
        big = rule_resources(_workflow(blocks={"shape": [16, 128, 128]}, **low), rule)
        assert big["mem_mb"](job) >= one["mem_mb"](job), rule
    assert rule_resources(_workflow(blocks={"shape": [16, 128, 128]}, **low), "segment_fragments")["mem_mb"](
        job) > rule_resources(_workflow(**low), "segment_fragments")["mem_mb"](job)
    assert rule_resources(wf, "coregister") == {"mem_mb": 2000, "runtime": 30}
    assert rule_resources(wf, "metrics")["mem_mb"] == wf.cfg["resources"]["min_mem_mb"]
    assert rule_resources(wf, "train")["runtime"](job) >= 30


def test_block_params_name_the_batch_roi_and_the_dataset_identity():
    import json

    wf = _workflow()
    # the read ROI with the halo + 1 voxel (it changes for the blocks next to new ones), clipped to the volume
    assert wf.batch_roi("ph", "z0-0_y0-1_x0-0") == "0 0 0 + 16 128 65"
    assert wf.batch_roi("ph", "z0-0_y0-0_x0-0", (0, 2, 2)) == "0 0 0 + 16 67 67"
    assert wf.batch_markers("ph", "predict", ["z0-0_y0-0_x0-0"]) == [
        "out dir/ph/blocks/predict/batches/z0-0_y0-0_x0-0.json"]
    # a source dataset's ROI may grow: its shape is not part of what every block depends on
    assert json.loads(wf.identity("real"))["dataset"]["roi"] == {"offset": [0, 2, 3]}
    assert "shape" in json.loads(wf.identity("ph"))["dataset"]["phantom"]


def test_digests_follow_the_files_a_checkpoint_rewrites(tmp_path):
    import json
    import os

    from connectomix.workflow.digests import load_cached, lut_digest

    lut = tmp_path / "lut_digests.json"
    assert lut_digest(lut, ["z0_y0_x0"]) == "none"
    lut.write_text(json.dumps({"z0_y0_x0": "a", "z0_y0_x1": "b"}))
    first = lut_digest(lut, ["z0_y0_x0"]), lut_digest(lut, ["z0_y0_x1"])
    lut.write_text(json.dumps({"z0_y0_x0": "a", "z0_y0_x1": "c"}))
    os.utime(lut, ns=(1, 1))  # another mtime: read again
    assert lut_digest(lut, ["z0_y0_x0"]) == first[0] and lut_digest(lut, ["z0_y0_x1"]) != first[1]
    reads = []
    load_cached(lut, reads.append)
    assert reads == []  # unchanged since the last read: from the cache
