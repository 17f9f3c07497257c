"""docs/results.md is generated from benchmarks/results/*.json by benchmarks/results_doc.py and cannot go stale."""

import importlib.util
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _results_doc():
    spec = importlib.util.spec_from_file_location("results_doc", REPO / "benchmarks" / "results_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_page_equals_the_generated_one():
    text = _results_doc().render(REPO / "benchmarks" / "results")
    assert text == (REPO / "docs" / "results.md").read_text(), "docs/results.md is stale: run make results-doc"
    for name in sorted(p.stem for p in (REPO / "benchmarks" / "results").glob("*.json")):
        assert f"`benchmarks/results/{name}.json`" in text, f"{name}.json has no table"


def test_a_changed_number_shows_up(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results", results)
    path = results / "segment_accuracy.json"
    rows = json.loads(path.read_text())
    row = next(r for r in rows
               if r["dataset"] == "phantom-unet" and r["method"] == "waterz whole volume, best threshold")
    doc = _results_doc()
    assert "| phantom-unet |" in doc.render(results) and "9.87 (0.7)" not in doc.render(results)
    row["voi"] = 9.87
    path.write_text(json.dumps(rows))
    assert "9.87 (0.7)" in doc.render(results)


def test_check_flags_a_stale_page(tmp_path):
    doc = _results_doc()
    out = tmp_path / "results.md"
    assert doc.main(["--out", str(out), "--check"]) == 1
    assert doc.main(["--out", str(out)]) == 0
    assert doc.main(["--out", str(out), "--check"]) == 0
