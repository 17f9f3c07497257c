"""Every path of a dataset's outputs under the results folder (docs/data-contracts.md).

Each method takes the dataset name last; the default, ``"{dataset}"``, gives the pattern a rule declares as input
or output (Snakemake fills the wildcard). Stage folders are named by their stage (``predict``, ``segment``, ...).
"""

from __future__ import annotations

DATASET = "{dataset}"
BATCH = "{batch}"


class Paths:
    """The output layout of one results folder (``results_dir`` of the config)."""

    def __init__(self, results: str):
        self.results = str(results)

    def dataset_dir(self, dataset: str = DATASET) -> str:
        """``results/{dataset}``: everything of one dataset."""
        return f"{self.results}/{dataset}"

    def file(self, name: str, dataset: str = DATASET) -> str:
        """A file (or folder) of the dataset: ``name`` relative to its folder (e.g. ``connectome/summary.json``)."""
        return f"{self.dataset_dir(dataset)}/{name}"

    def volume(self, dataset: str = DATASET) -> str:
        """The dataset's OME-Zarr group, ``volume.zarr``."""
        return self.file("volume.zarr", dataset)

    def array(self, name: str, dataset: str = DATASET) -> str:
        """An array (group) of ``volume.zarr``, e.g. ``raw``."""
        return f"{self.volume(dataset)}/{name}"

    def table(self, name: str, dataset: str = DATASET) -> str:
        """A dataset-level table, ``{name}.parquet`` (segments, skeletons, morphology, synapses, neurons, edges,
        edges_all, matches)."""
        return self.file(f"{name}.parquet", dataset)

    def summary(self, stage: str, dataset: str = DATASET) -> str:
        """A stage's summary next to its tables, ``{stage}.json`` (ingest, predict, segment, coregister)."""
        return self.file(f"{stage}.json", dataset)

    def gt(self, name: str = "", dataset: str = DATASET) -> str:
        """The phantom's ground truth, ``gt/`` (``name``: a file in it, e.g. ``synapses.parquet``)."""
        return self.file(f"gt/{name}" if name else "gt", dataset)

    def phantom_summary(self, dataset: str = DATASET) -> str:
        """``gt/phantom.json``: written last by the phantom, after the volume and every ground-truth file."""
        return self.gt("phantom.json", dataset)

    def raw_done(self, phantom: bool, dataset: str = DATASET) -> str:
        """The file that says ``raw`` (with its pyramid) is complete: the phantom's summary, or ingest's."""
        return self.phantom_summary(dataset) if phantom else self.summary("ingest", dataset)

    def work_dir(self, stage: str, dataset: str = DATASET) -> str:
        """A stage's work folder, ``{stage}/`` (blockwise stages keep their ``setup.json`` there)."""
        return self.file(stage, dataset)

    def setup(self, stage: str, dataset: str = DATASET) -> str:
        """A blockwise stage's ``{stage}/setup.json`` (connectomix.blockwise)."""
        return f"{self.work_dir(stage, dataset)}/setup.json"

    def marker_dir(self, dataset: str = DATASET) -> str:
        """``blocks/``: the per-block markers of every blockwise step, ``blocks/{step}/{block}.json``."""
        return self.file("blocks", dataset)

    def batch_marker(self, step: str, batch: str = BATCH, dataset: str = DATASET) -> str:
        """A batch job's marker, ``blocks/{step}/batches/{batch}.json``, written after the step's CLI succeeded."""
        return f"{self.marker_dir(dataset)}/{step}/batches/{batch}.json"

    def eval(self, stage: str, dataset: str = DATASET) -> str:
        """A stage's metrics, ``eval/{stage}.json``."""
        return self.file(f"eval/{stage}.json", dataset)

    def metrics(self, dataset: str = DATASET) -> str:
        """``eval/metrics.json``: every ``eval/{stage}.json`` merged."""
        return self.eval("metrics", dataset)

    def log(self, name: str, dataset: str = DATASET) -> str:
        """A job's log, ``logs/{name}.log``."""
        return self.file(f"logs/{name}.log", dataset)

    def model_dir(self, dataset: str = DATASET) -> str:
        """A model trained here on the dataset (``train.enabled``): ``results/models/{dataset}``."""
        return f"{self.results}/models/{dataset}"
