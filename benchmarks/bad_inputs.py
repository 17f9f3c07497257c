"""Bad inputs, tried as a user would: each case runs the real command line on a broken input, then again after the
fix. The verdict per case: a non-zero exit, a message that names the problem (and the file or key), nothing
half-written that a rerun would trust, and a rerun after the fix that works.

    python benchmarks/bad_inputs.py [--keep DIR]

Writes results/bad_inputs.json and results/bad_inputs.md. Every case builds its own small input in a temporary
folder (no data is downloaded); config cases stop at `check-config` and a Snakemake dry run.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import tifffile
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
VOXEL = ["40", "8", "8"]


@dataclass
class Case:
    name: str
    what: str  # the bad input, in words
    make: Callable[[Path], list[str]]  # builds the bad input in a folder; returns the command's arguments
    problem: str  # regex the error message must match (naming the problem and the file or key)
    fix: Callable[[Path], list[str] | None]  # repairs the input; returns new arguments where the fix needs them
    leftovers: tuple[str, ...] = ("out/volume.zarr/raw", "out/ingest.json")  # must not exist after the failure
    tool: str = "connectomix"  # or "snakemake": the workflow in the case's folder (its config.yaml)


def _stack(shape=(6, 32, 32), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _sections(folder: Path, data: np.ndarray, ext: str, **options) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for z, section in enumerate(data):
        path = folder / f"{z:02d}{ext}"
        if ext == ".tif":
            tifffile.imwrite(path, section, **options)
        else:
            Image.fromarray(section).save(path)


def _ingest(source: dict) -> list[str]:
    return ["ingest", "--source", json.dumps(source), "--volume", "out/volume.zarr", "--voxel-size", *VOXEL,
            "--chunk-shape", "2", "16", "16", "--pyramid-levels", "1", "--summary", "out/ingest.json"]


def _h5(path: Path, data, key="stack") -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=data)


def _good_sections(d: Path, ext=".png") -> None:
    shutil.rmtree(d / "src", ignore_errors=True)
    _sections(d / "src", _stack(), ext)


# --- ingest cases -----------------------------------------------------------------------------------------------


def _truncated_multipage(d: Path) -> list[str]:
    tifffile.imwrite(d / "stack.tif", _stack((10, 32, 32)), photometric="minisblack", metadata=None)
    with tifffile.TiffFile(d / "stack.tif") as tif:
        cut = tif.pages[6].offset + 2
    (d / "stack.tif").write_bytes((d / "stack.tif").read_bytes()[:cut])
    return _ingest({"path": "stack.tif"})


def _corrupt_png(d: Path) -> list[str]:
    _good_sections(d)
    (d / "src" / "03.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return _ingest({"path": "src"})


def _truncated_png(d: Path) -> list[str]:
    _good_sections(d)
    path = d / "src" / "04.png"
    path.write_bytes(path.read_bytes()[:200])
    return _ingest({"path": "src"})


def _truncated_tiff_sequence(d: Path) -> list[str]:
    _good_sections(d, ".tif")
    path = d / "src" / "05.tif"
    path.write_bytes(path.read_bytes()[:300])
    return _ingest({"path": "src"})


def _corrupt_tiff_pixels(d: Path) -> list[str]:
    shutil.rmtree(d / "src", ignore_errors=True)
    _sections(d / "src", _stack(), ".tif", compression="zlib")
    path = d / "src" / "04.tif"
    with tifffile.TiffFile(path) as tif:
        start = tif.pages[0].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[start:start + 16] = b"\xff" * 16
    path.write_bytes(bytes(raw))
    return _ingest({"path": "src"})


def _mixed_shapes(d: Path) -> list[str]:
    _good_sections(d)
    Image.fromarray(_stack((1, 24, 32))[0]).save(d / "src" / "02.png")
    return _ingest({"path": "src"})


def _mixed_formats(d: Path) -> list[str]:
    _good_sections(d)
    tifffile.imwrite(d / "src" / "09.tif", _stack((1, 32, 32))[0])
    return _ingest({"path": "src"})


def _rgb(d: Path) -> list[str]:
    _good_sections(d)
    rgb = np.stack([_stack((1, 32, 32), s)[0] for s in (1, 2, 3)], -1)
    Image.fromarray(rgb).save(d / "src" / "01.png")
    return _ingest({"path": "src"})


def _empty_folder(d: Path) -> list[str]:
    (d / "src").mkdir()
    return _ingest({"path": "src"})


def _missing_path(d: Path) -> list[str]:
    return _ingest({"path": "nowhere"})


def _unknown_format(d: Path) -> list[str]:
    (d / "em.xyz").write_bytes(b"\x00" * 512)
    return _ingest({"path": "em.xyz"})


def _h5_missing_key(d: Path) -> list[str]:
    _h5(d / "em.h5", _stack())
    return _ingest({"path": "em.h5", "key": "volumes/raw"})


def _h5_no_key(d: Path) -> list[str]:
    _h5(d / "em.h5", _stack())
    return _ingest({"path": "em.h5"})


def _h5_nan(d: Path) -> list[str]:
    data = _stack().astype(np.float32)
    data[4, 3, 5] = np.nan
    _h5(d / "em.h5", data)
    return _ingest({"path": "em.h5", "key": "stack"})


def _one_section(d: Path) -> list[str]:
    _h5(d / "em.h5", _stack((1, 32, 32)))
    return _ingest({"path": "em.h5", "key": "stack"})


def _constant(d: Path) -> list[str]:
    _h5(d / "em.h5", np.full((6, 32, 32), 117, np.uint8))
    return _ingest({"path": "em.h5", "key": "stack"})


def _fix_h5(d: Path) -> None:
    _h5(d / "em.h5", _stack())


# --- config cases: check-config, then the workflow's dry run ------------------------------------------------------

PHANTOM = {"phantom": {"voxel_size": [40, 8, 8], "phantom": {"shape": [16, 128, 128], "n_neurons": 6,
                                                              "soma_radius_nm": 170.0}}}


def _config(d: Path, extra: dict) -> list[str]:
    config = {"results_dir": str(d / "results"), "datasets": dict(PHANTOM), **extra}
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    return ["check-config", str(d / "config.yaml")]


def _fix_config(d: Path) -> None:
    _config(d, {})


def _config_case(extra) -> Callable[[Path], list[str]]:
    return lambda d: _config(d, extra)


def _too_small_phantom(d: Path) -> list[str]:
    config = {"results_dir": str(d / "results"),
              "datasets": {"phantom": {"voxel_size": [40, 8, 8], "phantom": {"shape": [16, 64, 64], "n_neurons": 40}}}}
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    return ["check-config", str(d / "config.yaml")]


# --- model cases -------------------------------------------------------------------------------------------------


def _model_volume(d: Path) -> None:
    from connectomix import io

    io.write_full(d / "volume.zarr", "raw", _stack((16, 64, 64)), (8, 64, 64), (40, 8, 8))


def _predict_setup(d: Path, checkpoint: str) -> list[str]:
    return ["predict", "setup", "--volume", "volume.zarr", "--work-dir", "out/predict", "--params",
            json.dumps({"checkpoint": checkpoint}), "--block-shape", "16", "64", "64"]


def _bare_weights(d: Path) -> list[str]:
    _model_volume(d)
    shutil.copy(REPO / "models" / "phantom" / "weights.pt", d / "weights.pt")
    return _predict_setup(d, "weights.pt")


def _pickled_weights(d: Path) -> list[str]:
    _model_volume(d)
    shutil.copytree(REPO / "models" / "phantom", d / "model")
    with open(d / "model" / "weights.pt", "wb") as f:
        pickle.dump({"conv": ("os.system", "echo pwned")}, f)
    from connectomix.provenance import file_checksum

    meta = json.loads((d / "model" / "checkpoint.json").read_text())
    meta["weights_sha256"] = file_checksum(d / "model" / "weights.pt")
    (d / "model" / "checkpoint.json").write_text(json.dumps(meta))
    return _predict_setup(d, "model")


def _fix_bare_weights(d: Path) -> None:
    shutil.copytree(REPO / "models" / "phantom", d / "weights.pt.dir")
    (d / "weights.pt").unlink()
    (d / "weights.pt.dir").rename(d / "weights.pt")


def _fix_pickled(d: Path) -> None:
    shutil.rmtree(d / "model")
    shutil.copytree(REPO / "models" / "phantom", d / "model")


# --- workflow cases: Snakemake on the case folder's config.yaml ---------------------------------------------------


def _quoted_results_dir(d: Path) -> list[str]:
    """A results folder whose name the shell would interpret if a rule left it unquoted."""
    config = {"results_dir": str(d / 'it\'s a "test" $dir;'), "datasets": dict(PHANTOM)}
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "before").write_text("\n".join(sorted(p.name for p in d.iterdir())))
    return ["--until", "phantom"]


def _stray_files(d: Path) -> list[str] | None:
    """The fix is none (the run must work as it is): fail the rerun when the first run left a file outside."""
    before = set((d / "before").read_text().split("\n")) | {"before", ".snakemake", 'it\'s a "test" $dir;'}
    stray = sorted(p.name for p in d.iterdir() if p.name not in before)
    return ["--until", "phantom"] if not stray else ["--this-is-not-an-option", *stray]


def _replaced_source(d: Path) -> list[str]:
    """Ingest a source, then replace its file by other data of the same shape: the next run must re-ingest."""
    _h5(d / "em.h5", _stack((16, 64, 64), 1))
    config = {"results_dir": str(d / "results"),
              "datasets": {"em": {"voxel_size": [40, 8, 8], "source": {"path": str(d / "em.h5"), "key": "stack"}}},
              "storage": {"chunk_shape": [8, 64, 64]}, "blocks": {"shape": [16, 64, 64]}}
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    if _snakemake(["--until", "ingest"], d).returncode:
        raise RuntimeError("the first ingest failed")
    _h5(d / "em.h5", _stack((16, 64, 64), 2))
    return ["--until", "ingest", "--dry-run"]


CASES = [
    Case("truncated multi-page TIFF", "a stack cut at a page header (a copy that stopped)", _truncated_multipage,
         r"stack\.tif: corrupt or truncated TIFF .*last readable page is 5",
         lambda d: tifffile.imwrite(d / "stack.tif", _stack((10, 32, 32)), photometric="minisblack")),
    Case("truncated TIFF section", "one file of a TIFF sequence cut short", _truncated_tiff_sequence,
         r"05\.tif: .*(corrupt or truncated|truncated or corrupt)", lambda d: _good_sections(d, ".tif")),
    Case("corrupt TIFF pixels", "intact headers, garbage compressed pixels", _corrupt_tiff_pixels,
         r"04\.tif.*corrupt or truncated", lambda d: _good_sections(d, ".tif")),
    Case("corrupt PNG", "a PNG with garbage after its signature", _corrupt_png, r"03\.png.*corrupt",
         _good_sections),
    Case("truncated PNG", "a PNG cut short", _truncated_png, r"04\.png.*(corrupt|truncated)", _good_sections),
    Case("mixed section shapes", "one section of another size", _mixed_shapes, r"02\.png: mixed section shapes",
         _good_sections),
    Case("mixed formats", "a TIFF among PNGs", _mixed_formats, r"mixed image formats", _good_sections),
    Case("colour section", "an RGB image among grey ones", _rgb, r"01\.png: colour", _good_sections),
    Case("empty folder", "a folder with no images", _empty_folder, r"src: no .*images", _good_sections),
    Case("missing path", "a source path that does not exist", _missing_path, r"nowhere: source path does not exist",
         lambda d: _sections(d / "nowhere", _stack(), ".png")),
    Case("unknown format", "a file of no known format", _unknown_format, r"em\.xyz: unknown source format",
         lambda d: _h5(d / "em.h5", _stack()) or _ingest({"path": "em.h5", "key": "stack"})),
    Case("HDF5 key missing", "a key the file does not have", _h5_missing_key, r"em\.h5.*volumes/raw",
         lambda d: _h5(d / "em.h5", _stack(), key="volumes/raw")),
    Case("HDF5 key not given", "an HDF5 file without source.key", _h5_no_key, r"em\.h5: HDF5 source needs source\.key",
         lambda d: _ingest({"path": "em.h5", "key": "stack"})),
    Case("NaN voxels", "a float volume with a NaN", _h5_nan, r"em\.h5.*(NaN|non-finite)", _fix_h5),
    Case("one section", "a stack of one section", _one_section, r"em\.h5.*section", _fix_h5),
    Case("blank volume", "every voxel the same value", _constant, r"em\.h5: .*constant volume", _fix_h5),
    Case("unknown train.dataset", "train.dataset names no dataset", _config_case({"train": {"dataset": "nope"}}),
         r"train\.dataset names dataset 'nope'", _fix_config, ("results",)),
    Case("segment ground truth typo", "segment.evaluation.ground_truth names no dataset",
         _config_case({"segment": {"evaluation": {"ground_truth": {"phantm": {"path": "gt.h5"}}}}}),
         r"segment\.evaluation\.ground_truth names dataset 'phantm'", _fix_config, ("results",)),
    Case("synapses ground truth typo", "synapses.evaluation.ground_truth names no dataset",
         _config_case({"synapses": {"evaluation": {"ground_truth": {"nope": {"path": "c.h5"}}}}}),
         r"synapses\.evaluation\.ground_truth names dataset 'nope'", _fix_config, ("results",)),
    Case("unknown config key", "a misspelt key", _config_case({"segmnt": {}}), r"segmnt", _fix_config, ("results",)),
    Case("blocks not a multiple of chunks", "blocks.shape not aligned to storage chunks",
         _config_case({"blocks": {"shape": [24, 100, 100]}}), r"multiple of storage\.chunk_shape", _fix_config,
         ("results",)),
    Case("phantom too small", "more somata than the phantom can hold", _too_small_phantom,
         r"datasets\.phantom\.phantom: cannot place 40 non-overlapping somata", _fix_config, ("results",)),
    Case("bare weights file", "a .pt file given as the model", _bare_weights,
         r"weights\.pt is a weights file, not a checkpoint: a checkpoint is a folder", _fix_bare_weights,
         ("out/predict/setup.json", "volume.zarr/affinities")),
    Case("results dir with quotes", "results_dir named it's a \"test\" $dir; (shell metacharacters)",
         _quoted_results_dir, r"", _stray_files, (), tool="snakemake"),
    Case("replaced source file", "the source replaced by other data of the same shape", _replaced_source,
         r"rule ingest", lambda d: ["--until", "ingest"], (), tool="snakemake"),
    Case("pickled weights", "weights that would run code when unpickled", _pickled_weights,
         r"not a plain tensor state dict .*was refused: loading anything else can run code", _fix_pickled,
         ("out/predict/setup.json", "volume.zarr/affinities")),
]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "connectomix", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def _snakemake(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                           str(cwd), "--configfile", str(cwd / "config.yaml"), "--cores", "2", *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=1200)


def run_case(case: Case, folder: Path) -> dict:
    """A case's verdict. An error case must fail, naming the problem; a workflow case ("snakemake") must work as a
    user expects: the run succeeds and leaves nothing outside its folders, or the dry run plans the rerun."""
    folder.mkdir(parents=True)
    args = case.make(folder)
    if case.tool == "snakemake":
        first = _snakemake(args, folder)
        again = _snakemake(case.fix(folder) or args, folder)
        out = first.stdout + first.stderr
        row = {"case": case.name, "input": case.what, "exit_code": first.returncode, "fails": False,
               "names_the_problem": bool(re.search(case.problem, out)) if case.problem else True,
               "lines": 0, "nothing_half_written": True, "left_behind": [],
               "rerun_after_fix_works": again.returncode == 0,
               "message": (out.strip().splitlines() or [""])[-1][:300]}
        row["passed"] = first.returncode == 0 and row["names_the_problem"] and row["rerun_after_fix_works"]
        return row
    bad = _cli(args, folder)
    message = (bad.stderr.strip().splitlines() or [""])[-1]
    left = [p for p in case.leftovers if (folder / p).exists()]
    again = _cli(case.fix(folder) or args, folder)
    row = {
        "case": case.name, "input": case.what, "exit_code": bad.returncode,
        "fails": bad.returncode != 0,
        "names_the_problem": bool(re.search(case.problem, bad.stderr)),
        "lines": len(bad.stderr.strip().splitlines()),
        "nothing_half_written": not left, "left_behind": left,
        "rerun_after_fix_works": again.returncode == 0,
        "message": message[:300],
    }
    if again.returncode:
        row["rerun_error"] = (again.stderr.strip().splitlines() or [""])[-1][:300]
    row["passed"] = row["fails"] and row["names_the_problem"] and row["nothing_half_written"] \
        and row["rerun_after_fix_works"] and row["lines"] <= 5
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="build the cases in this folder and keep it (default: a temporary one)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for bad_inputs.json and .md")
    args = parser.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    rows = []
    for i, case in enumerate(CASES):
        row = run_case(case, root / f"{i:02d}")
        rows.append(row)
        print(f"{'ok  ' if row['passed'] else 'FAIL'} {case.name}: exit {row['exit_code']}; {row['message'][:110]}",
              flush=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"cases": len(rows), "passed": sum(r["passed"] for r in rows)}
    (out / "bad_inputs.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    lines = [f"# Bad inputs: {summary['passed']} of {summary['cases']} cases pass", "",
             "Each case: the command on the broken input must fail (exit), with an error of at most 5 lines naming "
             "the problem (message), leave nothing a rerun would trust (clean), and work once the input is fixed "
             "(rerun). Workflow cases (exit 0) must work as they are: a results folder with shell metacharacters "
             "writes nothing outside it, and a replaced source file makes the next run re-ingest. "
             "`python benchmarks/bad_inputs.py`.", "",
             "| case | input | exit | message names it | clean | rerun | passed |", "|---|---|---|---|---|---|---|"]
    yes = lambda v: "yes" if v else "**no**"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['case']} | {r['input']} | {r['exit_code']} | {yes(r['names_the_problem'])} | "
                     f"{yes(r['nothing_half_written'])} | {yes(r['rerun_after_fix_works'])} | {yes(r['passed'])} |")
    (out / "bad_inputs.md").write_text("\n".join(lines) + "\n")
    return 0 if summary["passed"] == summary["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
