"""The Snakemake workflow's glue, importable and testable without Snakemake (rules/common.smk binds it to the
config; the rule files call it through common.smk's functions).

* :mod:`~connectomix.workflow.paths`: every output path of a dataset (docs/data-contracts.md);
* :mod:`~connectomix.workflow.core`: :class:`Workflow`, a config's datasets, shapes, block grids, batches, halos;
* :mod:`~connectomix.workflow.targets`: which datasets each stage applies to, the default and metric targets;
* :mod:`~connectomix.workflow.digests`: digests of checkpoint outputs that block rules take as params;
* :mod:`~connectomix.workflow.resources`: mem_mb and runtime of every rule;
* :mod:`~connectomix.workflow.args`: command-line arguments built from the config;
* :mod:`~connectomix.workflow.predict`: the checkpoint predict uses, its context, the training labels.
"""

from connectomix.workflow.core import Workflow
from connectomix.workflow.paths import Paths

__all__ = ["Paths", "Workflow"]
