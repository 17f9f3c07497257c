"""Write the conda env file that rules declare from the pinned lock file (``make lock`` calls this)."""

from __future__ import annotations

import sys
from pathlib import Path

HEADER = """\
# Generated from requirements.lock by `python -m connectomix.envs`: do not edit by hand.
# Every rule declares this env (conda:); pins are exactly those `make` installs into .venv.
name: connectomix
channels:
  - conda-forge
  - nodefaults
dependencies:
  - python=3.11
  - pip
  - pip:
"""


def lock_pins(lock: Path) -> list[str]:
    """``name==version`` lines of a pip lock file, comments and blanks dropped."""
    return [line.strip() for line in lock.read_text().splitlines() if line.strip() and not line.startswith("#")]


def render(lock: Path) -> str:
    lines = [f"      - {pin}" for pin in lock_pins(lock)]
    lines.append("      - --editable ..  # connectomix itself, from the repository root")
    return HEADER + "\n".join(lines) + "\n"


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    (root / "envs" / "connectomix.yaml").write_text(render(root / "requirements.lock"))
