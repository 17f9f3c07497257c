"""Run every benchmark script in this folder (or those named) and index their tables.

    python benchmarks/run.py                 # all
    python benchmarks/run.py phantom_speed   # some

Each script writes ``results/<name>.json`` and ``results/<name>.md``; this writes ``results/README.md`` listing them
and regenerates ``docs/results.md`` from the JSONs (``results_doc.py``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main(names: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in ("run.py", "results_doc.py"))
    if names:
        scripts = [p for p in scripts if p.stem in names]
    failed = []
    for script in scripts:
        start = time.perf_counter()
        print(f"== {script.stem}", flush=True)
        result = subprocess.run([sys.executable, str(script)], cwd=HERE.parent)
        print(f"   {script.stem}: exit {result.returncode} in {time.perf_counter() - start:.0f} s", flush=True)
        if result.returncode:
            failed.append(script.stem)
    tables = sorted(RESULTS.glob("*.md"))
    index = ["# Benchmark results", ""]
    index += [f"- [{t.stem}]({t.name})" for t in tables if t.name != "README.md"]
    (RESULTS / "README.md").write_text("\n".join(index) + "\n")
    if subprocess.run([sys.executable, str(HERE / "results_doc.py")], cwd=HERE.parent).returncode:
        failed.append("results_doc")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
