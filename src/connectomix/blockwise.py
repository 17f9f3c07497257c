"""One step protocol for every blockwise stage (predict, segment, synapses, skeletonize), in the spirit of daisy's
Task: a stage declares what it does, this module runs it.

A :class:`Stage` declares

* ``setup(volume, work_dir, params, block_shape, chunk_shape=None, marker_dir=None, **extras) -> record``: resolve
  the parameters, allocate the output arrays and write ``{work_dir}/setup.json`` (:func:`new_setup`, then
  :func:`save_setup`): everything that defines a block's result (the resolved parameters, the block grid: shape,
  block_shape, chunk_shape, halo; voxel size, the volume, the marker folder, provenance);
* one or more named block :class:`Step` s: ``run(setup, block, context) -> marker fields`` reads the block's read
  ROI and writes only its write ROI; ``prepare(setup, options) -> context`` runs once per process before the blocks
  (a model, a lookup table);
* ``finish(work_dir, summary=None, **outputs) -> summary``: merge, tables, the summary JSON (written last).

Global non-block steps a stage needs in between (segment agglomerate, skeletonize somata and morphology) are extra
subcommands of the stage. The runner (:func:`run_blocks`) is the same for every stage: it loads ``setup.json``,
builds the grid from it (:func:`grid_of`), runs the step on the given blocks (a batch), times it, records the peak
memory and writes each block's marker last and atomically to ``{marker_dir}/{folder}/{block}.json``
(:func:`marker_folder`: ``{stage}`` for a step named like its stage, else ``{stage}_{step}``). A block whose step
raises gets no marker.

The command line, built by :func:`add_arguments`, is the same for every stage::

    connectomix STAGE setup  --volume V --work-dir W --params JSON --block-shape Z Y X [--chunk-shape Z Y X]
                             [--marker-dir M] [stage extras]
    connectomix STAGE block  --work-dir W [--step NAME] --blocks ID [ID ...] [--threads N --device D --batch-size B]
    connectomix STAGE finish --work-dir W [--summary S] [stage outputs]

Only options that do not change a block's result (threads, device, batch size) are block options, and a stage
takes those it uses (:data:`RUNTIME`).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from connectomix.blocks import Block, BlockGrid, atomic_write_json, read_marker, write_marker

SETUP_FILE = "setup.json"

# The runtime-only block options (they never change a block's result): name -> (flags, argparse keywords).
RUNTIME: dict[str, tuple[tuple[str, ...], dict]] = {
    "threads": (("--threads",), {"type": int, "default": 1, "help": "CPU threads (0: all cores; default 1)"}),
    "device": (("--device",), {"default": "auto", "help": "auto (GPU when present), cpu, cuda, cuda:1 ..."}),
    "batch_size": (("--batch-size",), {"type": int, "default": 1,
                                       "help": "blocks that go through the network together, and tiles per "
                                               "forward pass (default 1)"}),
}


def option(*flags: str, **kwargs) -> tuple[tuple[str, ...], dict]:
    """A stage's extra CLI option of ``setup`` or ``finish``: ``add_argument``'s flags and keywords."""
    return flags, kwargs


@dataclass(frozen=True)
class Step:
    """A named block step. ``run(setup, block, context) -> marker fields``, or with ``batched`` ``run(setup, blocks,
    context) -> [fields per block]`` for ``batch_size`` blocks that share work (network batches).
    ``prepare(setup, options) -> context`` runs once per process, before the blocks."""

    name: str
    run: Callable
    prepare: Callable | None = None
    batched: bool = False


@dataclass(frozen=True)
class Stage:
    """A blockwise stage: its setup, block steps (in workflow order) and finish; the runtime options its steps use
    (keys of :data:`RUNTIME`) and its extra ``setup`` and ``finish`` options (:func:`option`)."""

    name: str
    setup: Callable
    steps: tuple[Step, ...]
    finish: Callable
    runtime: tuple[str, ...] = ()
    setup_options: tuple = ()
    finish_options: tuple = ()

    def step(self, name: str | None = None) -> Step:
        """The step called ``name`` (default: the first)."""
        if name is None:
            return self.steps[0]
        for step in self.steps:
            if step.name == name:
                return step
        raise ValueError(f"{self.name} has no block step {name!r} (steps: {', '.join(s.name for s in self.steps)})")

    def options(self, given: dict) -> dict:
        """The runtime options of this stage: ``given`` over the defaults; unknown ones are an error."""
        unknown = sorted(set(given) - set(self.runtime))
        if unknown:
            raise ValueError(f"{self.name} block takes no option {unknown} (runtime options: {list(self.runtime)})")
        return {name: given.get(name, RUNTIME[name][1]["default"]) for name in self.runtime}


# --- setup.json ------------------------------------------------------------------------------------------------


def new_setup(stage: str, volume, work_dir, *, shape, block_shape, chunk_shape, halo, voxel_size, offset_nm,
              params: dict, provenance: dict, marker_dir=None, **extra) -> dict:
    """The setup record of a stage (not written yet: :func:`save_setup`). The grid is checked here (block shape a
    multiple of the chunk shape), before the stage allocates anything. ``marker_dir`` defaults to
    ``{work_dir}/../blocks``; ``extra`` holds the stage's own fields."""
    grid = BlockGrid(shape, block_shape, halo, chunk_shape)
    return {
        "stage": stage,
        "volume": str(volume),
        "work_dir": str(work_dir),
        "marker_dir": str(marker_dir or Path(work_dir).parent / "blocks"),
        "shape": list(grid.volume_shape),
        "block_shape": list(grid.block_shape),
        "chunk_shape": list(grid.chunk_shape),
        "halo": list(grid.halo),
        "blocks": len(grid),
        "voxel_size": [float(v) for v in voxel_size],
        "offset_nm": [float(o) for o in offset_nm],
        "params": params,
        "provenance": provenance,
        **extra,
    }


def save_setup(record: dict) -> dict:
    """Write ``{work_dir}/setup.json`` (atomically); returns the record."""
    Path(record["work_dir"]).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(record["work_dir"]) / SETUP_FILE, record)
    return record


def load_setup(work_dir, stage: str | None = None) -> dict:
    """The record a stage's setup wrote in ``work_dir``; a clear error naming the file and the command to run when
    it is missing or belongs to another stage. ``work_dir`` is where it was read (a copied folder works)."""
    path = Path(work_dir) / SETUP_FILE
    command = f"`connectomix {stage or 'STAGE'} setup --work-dir {work_dir} ...`"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run {command} first")
    record = json.loads(path.read_text())
    if stage is not None and record.get("stage", stage) != stage:
        raise ValueError(f"{path} is the setup of stage {record['stage']!r}, not {stage!r}: run {command}")
    record["work_dir"] = str(work_dir)
    if stage is not None:
        record.setdefault("stage", stage)
    return record


def grid_of(setup: dict, halo: Sequence[int] | None = None) -> BlockGrid:
    """The block grid of a setup record (with another ``halo`` for a pass that reads more context)."""
    return BlockGrid(setup["shape"], setup["block_shape"], setup["halo"] if halo is None else halo,
                     setup["chunk_shape"])


# --- markers ---------------------------------------------------------------------------------------------------


def marker_folder(stage: str, step: str) -> str:
    """The folder of a step's block markers under the marker dir: the stage's name for a step named like its stage
    (``predict``), else ``{stage}_{step}`` (``segment_fragments``)."""
    return stage if step == stage else f"{stage}_{step}"


def marker_path(setup: dict, step: str, block: Block | str) -> Path:
    """``{marker_dir}/{folder}/{block}.json``."""
    block_id = block if isinstance(block, str) else block.id
    return Path(setup["marker_dir"]) / marker_folder(setup["stage"], step) / f"{block_id}.json"


def read_markers(setup: dict, step: str) -> list[dict]:
    """Every block's marker of a step, in grid order; a clear error when a block has none (not done yet)."""
    ids = grid_of(setup).ids()
    paths = [marker_path(setup, step, b) for b in ids]
    missing = [p for p in paths if not p.exists()]
    if missing:
        command = f"connectomix {setup['stage']} block --step {step}"
        raise FileNotFoundError(f"{len(missing)} of {len(ids)} blocks have no marker of `{command}` (e.g. "
                                f"{missing[0]}): run it on them")
    return [read_marker(p) for p in paths]


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MB: VmHWM (Linux; reset by exec, unlike ru_maxrss which a child
    inherits from its parent), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


# --- the runner ------------------------------------------------------------------------------------------------


def run_blocks(stage: Stage, work_dir, block_ids: Sequence[str], step: str | None = None, **options) -> list[dict]:
    """Run ``step`` of ``stage`` on the given blocks (one batch job), one after another (a batched step:
    ``batch_size`` at a time). Each block's marker (the step's fields, ``seconds`` and ``peak_rss_mb``) is written
    after its work, atomically; a block whose step raises gets none. Returns the fields per block."""
    setup = load_setup(work_dir, stage.name)
    chosen = stage.step(step)
    options = stage.options(options)
    grid = grid_of(setup)
    blocks = [grid.block(b) for b in block_ids]  # every id checked before any work
    context = chosen.prepare(setup, options) if chosen.prepare else None
    size = max(1, int(options["batch_size"])) if chosen.batched else 1
    done = []
    for i in range(0, len(blocks), size):
        group = blocks[i:i + size]
        start = time.perf_counter()
        fields = chosen.run(setup, group, context) if chosen.batched else [chosen.run(setup, group[0], context)]
        seconds = (time.perf_counter() - start) / len(group)
        for block, values in zip(group, fields):
            values = {**values, "seconds": round(seconds, 3), "peak_rss_mb": peak_rss_mb()}
            write_marker(marker_path(setup, chosen.name, block), block, **values)
            done.append(values)
    return done


def run_step(stage: Stage, work_dir, step: str | None = None, block_ids: Sequence[str] | None = None,
             workers: int = 1, **options) -> list[dict]:
    """:func:`run_blocks` on every block of the grid (or ``block_ids``) in this process, or split into ``workers``
    batches run on a process pool, as the workflow's batch jobs would run (tests, benchmarks, small volumes)."""
    if block_ids is None:
        block_ids = grid_of(load_setup(work_dir, stage.name)).ids()
    if workers <= 1:
        return run_blocks(stage, work_dir, block_ids, step, **options)
    from concurrent.futures import ProcessPoolExecutor

    batches = [list(block_ids[i::workers]) for i in range(workers) if block_ids[i::workers]]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(partial(run_blocks, stage, work_dir, step=step, **options), batches))
    return [values for part in parts for values in part]


# --- the command line ------------------------------------------------------------------------------------------


def json_object(text: str) -> dict:
    """``--params``: a JSON object, or a clear error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text[:200]!r}")
    return value


def pyramid_options(levels: int) -> tuple:
    """``--pyramid-levels`` (default ``levels``) and ``--pyramid-factor`` of a finish step that builds a pyramid."""
    return (
        option("--pyramid-levels", type=int, default=levels,
               help=f"pyramid levels incl. full resolution (default {levels})"),
        option("--pyramid-factor", type=int, nargs=3, default=(1, 2, 2), metavar=("Z", "Y", "X"),
               help="downsampling per level (default 1 2 2)"),
    )


def _zyx(parser, flag: str, help: str, required: bool = False) -> None:
    parser.add_argument(flag, type=int, nargs=3, required=required, metavar=("Z", "Y", "X"), help=help)


def _add_options(parser, options) -> list[str]:
    return [parser.add_argument(*flags, **kwargs).dest for flags, kwargs in options]


def add_arguments(parser: argparse.ArgumentParser, stage: Stage):
    """The ``setup``, ``block`` and ``finish`` subcommands of ``stage`` (each sets ``args.func``); returns the
    subparsers for the stage's extra subcommands."""
    sub = parser.add_subparsers(dest="action", required=True)
    s = sub.add_parser("setup", help="allocate the outputs; write WORK_DIR/setup.json (parameters, block grid)")
    s.add_argument("--volume", required=True, help="the dataset's OME-Zarr (results/{dataset}/volume.zarr)")
    s.add_argument("--work-dir", required=True, help=f"the stage's folder (results/{{dataset}}/{stage.name})")
    s.add_argument("--params", type=json_object, default={},
                   help=f"the `{stage.name}` parameters as JSON (defaults filled)")
    _zyx(s, "--block-shape", "block (write ROI) shape, voxels", required=True)
    _zyx(s, "--chunk-shape", "storage chunk of the output arrays, voxels (default: the input array's)")
    s.add_argument("--marker-dir", help="block markers go to MARKER_DIR/{step}/{block}.json "
                                        "(default WORK_DIR/../blocks)")
    s.set_defaults(func=partial(_run_setup, stage, _add_options(s, stage.setup_options)))

    b = sub.add_parser("block", help="run a block step on the given blocks; each writes its marker last")
    b.add_argument("--work-dir", required=True, help="the stage's folder (holds setup.json)")
    names = [step.name for step in stage.steps]
    b.add_argument("--step", choices=names, default=names[0], required=len(names) > 1,
                   help=f"the block step ({', '.join(names)})")
    b.add_argument("--blocks", nargs="+", required=True, metavar="ID", help="block ids, e.g. z0_y1_x0")
    for name in stage.runtime:
        flags, kwargs = RUNTIME[name]
        b.add_argument(*flags, **kwargs)
    b.set_defaults(func=partial(_run_block, stage))

    f = sub.add_parser("finish", help="merge the blocks' results: tables, pyramids, the summary (last)")
    f.add_argument("--work-dir", required=True, help="the stage's folder (holds setup.json)")
    f.add_argument("--summary", help="summary JSON to write (last)")
    f.set_defaults(func=partial(_run_finish, stage, _add_options(f, stage.finish_options)))
    return sub


def _run_setup(stage: Stage, extras: list[str], args) -> int:
    record = stage.setup(args.volume, args.work_dir, args.params, args.block_shape, args.chunk_shape,
                         args.marker_dir, **{name: getattr(args, name) for name in extras})
    print(f"{stage.name} setup: {record['blocks']} blocks of {record['block_shape']}, halo {record['halo']}")
    return 0


def _run_block(stage: Stage, args) -> int:
    options = {name: getattr(args, name) for name in stage.runtime}
    for block_id, values in zip(args.blocks, run_blocks(stage, args.work_dir, args.blocks, args.step, **options)):
        print(f"{stage.name} {args.step} {block_id}: {json.dumps(values, sort_keys=True, default=str)}")
    return 0


def _run_finish(stage: Stage, extras: list[str], args) -> int:
    if args.summary:
        Path(args.summary).unlink(missing_ok=True)  # written last: none until finish succeeded
    summary = stage.finish(args.work_dir, summary=args.summary, **{name: getattr(args, name) for name in extras})
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (dict, list))}, default=str))
    return 0


def run(args) -> int:
    """Run the subcommand ``add_arguments`` (or the stage's extra subcommand) chose."""
    return int(args.func(args) or 0)

