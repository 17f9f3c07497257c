"""Serial-section alignment: raw sections (shifted, rotated, warped; some missing, blank, folded or cracked) to the
``aligned`` volume that predict reads, with a ``defects`` array and per-section tables.

* :mod:`connectomix.align.core`: defect detection, coarse and elastic matching, the global solve, rendering;
* :mod:`connectomix.align.blockwise`: the stage (setup estimates, blocks render, finish) and its tables;
* :mod:`connectomix.align.evaluate`: residual misalignment against a phantom's true transforms;
* :mod:`connectomix.align.cli`: ``python -m connectomix align setup | block | finish``.
"""

from connectomix.align.core import USABLE, classify, estimate, render

__all__ = ["USABLE", "classify", "estimate", "render"]
