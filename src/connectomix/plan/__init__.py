"""``connectomix plan``: jobs, CPU core-hours, GPU-hours and storage per stage for a volume, before anything runs.

    python -m connectomix plan --shape 25000 125000 125000 --voxel-size 40 8 8
    python -m connectomix plan --size-um 1000 1000 1000 --voxel-size 40 8 8 --json plan.json
    python -m connectomix plan --refresh-rates benchmarks/results --measure-storage results/phantom

Job counts come from the block grid every blockwise stage uses (connectomix.blocks.BlockGrid) and its batches
(one job per brick of blocks, blocks.per_job / blocks.max_jobs: connectomix.blocks.BlockBatches); hours are
voxels / rate, with per-voxel rates measured by the benchmarks and kept, with their sources, in the versioned file
``connectomix/data/rates.yaml`` (docs/plan.md). A step without a measured rate is shown as ``n/a`` with the
reason and is left out of the totals (which are then lower bounds, and say so); nothing is extrapolated from
another step. Storage is bytes per voxel per array (dtype x channels, the multiscale pyramid included) and, where
a run measured it, the bytes on disk per voxel after compression. Published figures for the MICrONS cubic
millimetre are printed next to the estimate, with their citations.
"""

from connectomix.plan.core import (
    PHANTOM_STEP, STEPS, Step, default_rates_path, load_rates, make_plan, read_per_write, shape_from_size,
)
from connectomix.plan.refresh import derive_rates, measure_storage, refresh_rates
from connectomix.plan.render import render

__all__ = ["PHANTOM_STEP", "STEPS", "Step", "default_rates_path", "derive_rates", "load_rates", "make_plan",
           "measure_storage", "read_per_write", "refresh_rates", "render", "shape_from_size"]
