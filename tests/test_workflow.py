"""The workflow house: CLI, config schema, Snakemake lint and dry-run plans, env pins."""

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
