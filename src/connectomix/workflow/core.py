"""The workflow's view of a validated config: datasets, their shapes, block grids and batches, stage halos.

Input functions, params and resource callables ask for these once per job, and planning time matters at 10^4+
blocks (benchmarks/plan_scale.py), so each is computed once per workflow (one Snakemake invocation).
"""

from __future__ import annotations

import json

from connectomix.blocks import BlockBatches, BlockGrid, batch_shape_for, block_id, parse_batch_id
from connectomix.workflow import predict
from connectomix.workflow.args import zyx
from connectomix.workflow.paths import Paths


class Workflow:
    """Datasets, shapes, grids and batches of a validated config (``connectomix.config.validate``)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.paths = Paths(cfg["results_dir"])
        self.datasets = list(cfg["datasets"])
        self._shapes: dict = {}
        self._grids: dict = {}
        self._batches: dict = {}
        self._batch_blocks: dict = {}
        self._read_voxels: dict = {}
        self._context = None

    # --- datasets ---------------------------------------------------------------------------------------------

    def dataset(self, name: str) -> dict:
        """The dataset's config."""
        return self.cfg["datasets"][name]

    def is_phantom(self, name: str) -> bool:
        return "phantom" in self.dataset(name)

    def phantoms(self) -> list[str]:
        return [name for name in self.datasets if self.is_phantom(name)]

    def raw_done(self, name: str) -> str:
        """The file that says ``raw`` (with its pyramid) is complete for a dataset."""
        return self.paths.raw_done(self.is_phantom(name), name)

    def shape(self, name: str) -> tuple:
        """Volume shape (z, y, x) in voxels, known before any job runs (phantom params or the source's headers)."""
        if name not in self._shapes:
            ds = self.dataset(name)
            if "phantom" in ds:
                from connectomix.phantom import PhantomParams

                shape = tuple(PhantomParams.from_dict(ds["phantom"]).shape)
            else:
                from connectomix.ingest import probe

                shape = tuple(ds["roi"]["shape"]) if "roi" in ds else tuple(probe(ds["source"]).shape)
            self._shapes[name] = shape
        return self._shapes[name]

    def voxels(self, name: str) -> int:
        z, y, x = self.shape(name)
        return z * y * x

    def check_growth(self, name: str) -> None:
        """A source dataset ingested before may only grow (connectomix.ingest.check_extension): fail before any
        job runs when its ROI shrank."""
        if self.is_phantom(name):
            return
        from connectomix.ingest import check_extension, previous_ingest

        ds = self.dataset(name)
        offset = ds["roi"]["offset"] if "roi" in ds else (0, 0, 0)
        try:
            check_extension(previous_ingest(self.paths.volume(name)), ds["source"], offset, self.shape(name))
        except ValueError as error:
            raise ValueError(f"dataset {name}: {error}") from None

    def identity(self, name: str) -> str:
        """What every block of the dataset depends on besides its ROI, as JSON: the dataset's config (for a source
        dataset without roi.shape: the ROI may grow), the storage chunks and the block shape."""
        ds = json.loads(json.dumps(self.dataset(name)))
        if "roi" in ds and not self.is_phantom(name):
            ds["roi"] = {"offset": ds["roi"]["offset"]}
        return json.dumps({"dataset": ds, "chunks": self.cfg["storage"]["chunk_shape"],
                           "block_shape": self.cfg["blocks"]["shape"]}, sort_keys=True)

    # --- stages -----------------------------------------------------------------------------------------------

    def checkpoint_dir(self) -> str:
        """The checkpoint folder predict uses (connectomix.workflow.predict.checkpoint_dir)."""
        return predict.checkpoint_dir(self.cfg, self.phantoms())

    def halo(self, stage: str | None, name: str) -> tuple:
        """The halo (voxels, z y x) a stage's blocks read around their write ROI ("synapses_partners": the
        partner pass of synapses_stitch); None: no halo."""
        if stage is None:
            return (0, 0, 0)
        if stage == "predict":
            if self._context is None:
                self._context = predict.context(self.cfg, self.phantoms())
            return tuple(self._context)
        if stage in ("synapses", "synapses_partners"):  # in voxels: they depend on the voxel size
            from connectomix.synapses import cleft_halo, partner_halo, resolve

            halo = cleft_halo if stage == "synapses" else partner_halo
            return tuple(halo(resolve(self.cfg["synapses"]), self.dataset(name)["voxel_size"]))
        if stage == "mesh":
            from connectomix.mesh.blockwise import HALO

            return HALO
        return tuple(self.cfg[stage]["halo"])  # segment, skeletonize

    # --- blocks and batches -----------------------------------------------------------------------------------

    def grid(self, name: str, halo=(0, 0, 0)) -> BlockGrid:
        """The dataset's block grid with a halo, built once per (dataset, halo)."""
        key = (name, tuple(halo))
        grid = self._grids.get(key)
        if grid is None:
            grid = self._grids[key] = BlockGrid(self.shape(name), self.cfg["blocks"]["shape"], halo,
                                                self.cfg["storage"]["chunk_shape"])
        return grid

    # Blockwise steps run one job per batch: a brick of blocks (blocks.per_job, "auto" by default: at most
    # blocks.max_jobs jobs per step). Snakemake spends a few ms planning each job, so 10^4-10^5 single-block jobs
    # per step would take minutes to plan (benchmarks/results/plan_scale.md). The CLIs still work on, and write a
    # marker for, every block; each batch job also writes blocks/{stage}/batches/{batch}.json, which the rules
    # track.

    def batches(self, name: str) -> BlockBatches:
        """The dataset's batches of blocks."""
        if name not in self._batches:
            grid = self.grid(name)
            shape = batch_shape_for(grid.grid_shape, self.cfg["blocks"]["per_job"], self.cfg["blocks"]["max_jobs"])
            self._batches[name] = BlockBatches(grid.grid_shape, shape)
        return self._batches[name]

    def batch_blocks(self, name: str, batch: str) -> list[str]:
        """The block ids of a batch."""
        key = (name, batch)
        if key not in self._batch_blocks:
            self._batch_blocks[key] = self.batches(name).blocks(batch)
        return self._batch_blocks[key]

    def batch_markers(self, name: str, step: str, batches=None) -> list[str]:
        """The batch markers of a blockwise step: of ``batches`` (ids), or of every batch of the dataset."""
        ids = self.batches(name).ids() if batches is None else batches
        return [self.paths.batch_marker(step, b, name) for b in ids]

    def batch_roi(self, name: str, batch: str, halo=(0, 0, 0)) -> str:
        """The read ROI (``offset + shape``) of a batch's blocks with ``halo`` + 1 voxel per axis. With the batch id
        and the block shape it fixes each block's write and read ROI, and it changes for the blocks that border
        new blocks when the dataset grows."""
        grown = tuple(int(h) + 1 for h in halo)
        roi = self.grid(name, grown).brick_read_roi(*parse_batch_id(batch))
        return f"{zyx(roi.offset)} + {zyx(roi.shape)}"

    def batches_meeting(self, name: str, batch: str, step: str, halo=(0, 0, 0)) -> list[str]:
        """The batch markers of blockwise ``step`` holding a block whose write ROI meets the read ROI (with
        ``halo``) of this batch: the outputs of ``step`` that this batch reads."""
        grid = self.grid(name, halo)
        first, last = grid.blocks_meeting(grid.brick_read_roi(*parse_batch_id(batch)))
        return self.batch_markers(name, step, self.batches(name).covering(first, last))

    def blocks_read(self, name: str, batch: str, halo=(0, 0, 0)) -> list[str]:
        """The ids of the blocks whose write ROI meets the read ROI (with ``halo``) of a batch's blocks."""
        grid = self.grid(name, halo)
        first, last = grid.blocks_meeting(grid.brick_read_roi(*parse_batch_id(batch)))
        return [block_id((z, y, x)) for z in range(first[0], last[0] + 1) for y in range(first[1], last[1] + 1)
                for x in range(first[2], last[2] + 1)]

    def batch_read_voxels(self, name: str, batch: str, halo=(0, 0, 0)) -> tuple[int, int]:
        """(largest, total) read-ROI voxels over the blocks of a batch: blocks run one after another, so memory
        follows the largest and runtime the total."""
        key = (name, tuple(halo), batch)
        if key not in self._read_voxels:
            self._read_voxels[key] = self.grid(name, halo).read_voxels(*parse_batch_id(batch))
        return self._read_voxels[key]
