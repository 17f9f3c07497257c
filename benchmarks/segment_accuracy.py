"""Segmentation accuracy benchmark: connectomix (blockwise) vs waterz and mwatershed run directly on the same
affinities. One command: ``python benchmarks/segment_accuracy.py`` -> benchmarks/results/segment_accuracy.{json,md}.

Inputs:
* ``synthetic``: Voronoi cells with membranes, affinities from ground truth degraded by blur, noise, holes and
  false boundaries (``connectomix.synthetic.segment``). Used while the phantom generator is absent.
* ``phantom`` (when ``connectomix.phantom`` exists): its gt/labels, the same degraded GT-derived affinities.
* ``phantom-unet``: the default phantom (seed 7) predicted by the shipped U-Net (models/phantom, trained on seed 8):
  the affinities the demo segments.
* ``gala-test-p1``: gala-fibsem test volume, affinities from gala's own boundary map test-p1
  (aff(v, v+o) = 1 - max(p1[v], p1[v+o])): the peer baseline through the same agglomeration.
* ``gala-test-unet``: the same test volume predicted by the U-Net that ``boundary_quality.py`` trains on gala train
  (benchmarks/out/gala-model; run that first), or ``--gala-affinities ZARR`` (an OME-Zarr with `affinities`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from connectomix import io
from connectomix.evaluate.segmentation import contingency, metrics, voi
from connectomix.segment import stitch
from connectomix.segment.fragments import NN_OFFSETS
from connectomix.synthetic import segment as syn

OUT = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def affinities_from_boundary(p: np.ndarray) -> np.ndarray:
    """uint8 nearest-neighbour affinities from a boundary probability map: 1 - max(p[v], p[v+o])."""
    affs = np.zeros((3,) + p.shape, np.float32)
    for c, off in enumerate(NN_OFFSETS):
        d = int(np.flatnonzero(off)[0])
        sl_v = [slice(None)] * 3
        sl_n = [slice(None)] * 3
        sl_v[d], sl_n[d] = slice(1, None), slice(None, -1)
        affs[c][tuple(sl_v)] = 1 - np.maximum(p[tuple(sl_v)], p[tuple(sl_n)])
    return np.clip(np.rint(affs * 255), 0, 255).astype(np.uint8)


def unet_affinities(checkpoint, raw) -> tuple[np.ndarray, dict]:
    """uint8 nearest-neighbour affinities of ``raw`` predicted whole by a checkpoint, and its JSON."""
    from connectomix.models import load_checkpoint
    from connectomix.predict import predict_volume, quantize

    model, meta = load_checkpoint(checkpoint)
    affs, _ = predict_volume(model, np.asarray(raw))
    return quantize(affs[:3]), meta


def inputs(args):
    out = {}
    shape = (32, 192, 192)
    gt = syn.voronoi_labels(shape, 120, seed=11, anisotropy=(40, 8, 8))
    out["synthetic"] = dict(gt=gt, affs=syn.degrade(syn.affinities_from_labels(gt), seed=12, holes=30,
                                                     false_boundaries=30), voxel=(40, 8, 8),
                            note="Voronoi GT, degraded GT affinities")
    try:
        from connectomix.phantom import PhantomParams, generate

        ph = generate(PhantomParams.from_dict({"seed": 7}), (40, 8, 8))
        pgt = np.asarray(ph.labels).astype(np.uint64)
        out["phantom"] = dict(gt=pgt, affs=syn.degrade(syn.affinities_from_labels(pgt), seed=12), voxel=(40, 8, 8),
                              note="phantom gt/labels, degraded GT affinities")
        checkpoint = Path(__file__).resolve().parents[1] / "models" / "phantom"
        if (checkpoint / "checkpoint.json").exists():
            out["phantom-unet"] = dict(gt=pgt, affs=unet_affinities(checkpoint, ph.raw)[0], voxel=(40, 8, 8),
                                       note="phantom seed 7, affinities of the shipped U-Net (models/phantom)")
    except Exception as error:  # noqa: BLE001 - the phantom is optional here
        print(f"phantom skipped: {error}", file=sys.stderr)
    gala = SHARED / "gala-fibsem"
    if gala.is_dir():
        import h5py

        with h5py.File(gala / "test-gt.lzf.h5") as f:
            ggt = np.asarray(f["stack"]).astype(np.uint64)
        with h5py.File(gala / "test-p1.lzf.h5") as f:
            p1 = np.asarray(f["stack"]).astype(np.float32)
        out["gala-test-p1"] = dict(gt=ggt, affs=affinities_from_boundary(p1), voxel=(10, 10, 10),
                                   note="gala test, affinities from gala's own boundary map test-p1 (no U-Net yet)")
        gala_model = Path(__file__).resolve().parent / "out" / "gala-model"
        if args.gala_affinities:
            affs = np.asarray(io.open_array(args.gala_affinities, "affinities")[...])
            out["gala-test-unet"] = dict(gt=ggt, affs=affs, voxel=(10, 10, 10), note="gala test, U-Net affinities")
        elif (gala_model / "checkpoint.json").exists():
            with h5py.File(gala / "test-image.h5") as f:
                affs, meta = unet_affinities(gala_model, f["stack"])
            out["gala-test-unet"] = dict(gt=ggt, affs=affs, voxel=(10, 10, 10),
                                         note=f"gala test, affinities of the U-Net trained on gala train "
                                              f"({meta['iterations']} iterations, benchmarks/boundary_quality.py)")
        else:
            print(f"gala-test-unet skipped: no {gala_model} (python benchmarks/boundary_quality.py trains it)",
                  file=sys.stderr)
    return out


def quiet(fn, *a, **k):
    """Run ``fn`` with the C-level stdout silenced (waterz prints progress from C++)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        return fn(*a, **k)
    finally:
        os.dup2(saved, 1)
        os.close(devnull)
        os.close(saved)


def best_of(gt, segs):
    """(threshold, metrics) with the lowest VOI sum over a list of (threshold, segmentation)."""
    scored = [(t, metrics(gt, s)) for t, s in segs]
    return min(scored, key=lambda x: x[1]["voi"])


def run_one(name, d, block_shape, threshold):
    import mwatershed
    import waterz

    gt, affs, voxel = d["gt"], d["affs"], d["voxel"]
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="cmx_bench_"))
    root = tmp / "volume.zarr"
    syn.write_test_volume(root, affs, voxel, (8, 32, 32))
    runs = [("mean", "auto"), ("quantile", "auto"), ("mutex", "auto")]
    if voxel[0] >= 3 * min(voxel[1:]):  # `auto` picks per-section fragments here: show 3D fragments as well
        runs.append(("mean", "3d"))
    for method, mode in runs:
        name_run = method if mode == "auto" else f"{method}, {mode.upper()} fragments"
        work = tmp / f"{method}-{mode}"
        t = time.perf_counter()
        summary = stitch.segment_volume(root, work, {"fragments": {"mode": mode},
                                                     "agglomerate": {"method": method, "threshold": threshold}},
                                        block_shape, (8, 32, 32))
        dt = time.perf_counter() - t
        seg = np.asarray(io.open_array(root, "segmentation")[...])
        rows.append({"method": f"connectomix blockwise ({name_run})", "threshold": threshold if method != "mutex"
                     else "bias 0.5", "seconds": dt, "blocks": summary["blocks"], **metrics(gt, seg)})
        if method == "mean":
            frags = np.asarray(io.open_array(root, "fragments")[...])
            from connectomix.blockwise import load_setup
            from connectomix.evaluate.segmentation import (
                adapted_rand, contingency, fragment_bound, threshold_sweep, voi,
            )
            from connectomix.segment.rag import Rag
            from connectomix.segment.stitch import agglomerate_graph

            nodes, merges = agglomerate_graph(Rag.from_npz(work / "graph.npz"), load_setup(work)["params"],
                                              threshold=1.0)
            sweep = threshold_sweep(gt, frags, nodes, merges, THRESHOLDS)
            best = min(sweep, key=lambda r: r["voi"])
            rows.append({"method": f"connectomix blockwise ({name_run}), best threshold", "seconds": None,
                         **{k: best[k] for k in ("threshold", "voi_split", "voi_merge", "voi", "arand")}})
            bound = fragment_bound(contingency(gt, frags))
            split, merge = voi(bound)
            rows.append({"method": f"connectomix fragments ({name_run}), bound: majority-overlap agglomeration",
                         "threshold": "-", "seconds": None,
                         "voi_split": split, "voi_merge": merge, "voi": split + merge, "arand": adapted_rand(bound)[0]})
            if mode == "auto":
                mean_fragments = frags
    f32 = affs.astype(np.float32) / 255
    t = time.perf_counter()
    # waterz yields one buffer, updated in place: copy each threshold's segmentation as it comes
    segs = list(zip(THRESHOLDS, quiet(lambda: [s.copy() for s in waterz.agglomerate(f32, THRESHOLDS)])))
    dt = time.perf_counter() - t
    at = dict(segs)[threshold]
    rows.append({"method": "waterz whole volume (own zwatershed fragments)", "threshold": threshold, "seconds": dt,
                 **metrics(gt, at)})
    th, m = best_of(gt, segs)
    rows.append({"method": "waterz whole volume, best threshold", "threshold": th, "seconds": None, **m})
    import fastremap

    # waterz sizes its tables by the largest id: give it consecutive ids
    frags, _ = fastremap.renumber(mean_fragments, preserve_zero=True)
    t = time.perf_counter()
    seg = quiet(lambda: next(waterz.agglomerate(f32, [threshold], fragments=frags.astype(np.uint64))))
    rows.append({"method": "waterz agglomeration on connectomix fragments", "threshold": threshold,
                 "seconds": time.perf_counter() - t, **metrics(gt, seg)})
    t = time.perf_counter()
    seg = mwatershed.agglom(f32.astype(np.float64) - 0.5, [list(o) for o in NN_OFFSETS]).astype(np.uint64)
    rows.append({"method": "mwatershed whole volume (pixel mutex, nn offsets)", "threshold": "bias 0.5",
                 "seconds": time.perf_counter() - t, **metrics(gt, seg)})
    for r in rows:
        r["dataset"] = name
        r["note"] = d["note"]
        r["voxels"] = int(gt.size)
    return rows


def markdown(rows) -> str:
    lines = ["| dataset | method | threshold | VOI split | VOI merge | VOI sum | ARAND | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        secs = f"{r['seconds']:.2f}" if r.get("seconds") is not None else "-"
        lines.append(f"| {r['dataset']} | {r['method']} | {r['threshold']} | {r['voi_split']:.3f} | "
                     f"{r['voi_merge']:.3f} | {r['voi']:.3f} | {r['arand']:.3f} | {secs} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gala-affinities", help="OME-Zarr with U-Net `affinities` of gala test (hook)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--datasets", nargs="*", help="run only these (their rows replace the same datasets' rows "
                        "in an existing table; the others are kept)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    out = Path(args.out)
    rows = []
    if args.datasets and (out / "segment_accuracy.json").exists():
        rows = [r for r in json.loads((out / "segment_accuracy.json").read_text())
                if r["dataset"] not in args.datasets]
    for name, d in inputs(args).items():
        if args.datasets and name not in args.datasets:
            continue
        block = (8, 64, 64) if d["voxel"][0] > 2 * d["voxel"][1] else (24, 64, 64)
        rows += run_one(name, d, block, args.threshold)
        print(markdown([r for r in rows if r["dataset"] == name]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "segment_accuracy.json").write_text(json.dumps(rows, indent=1, default=str))
    head = ("# Segmentation accuracy (VOI in bits, ground-truth label 0 ignored; lower is better)\n\n"
            "`python benchmarks/segment_accuracy.py`. All methods on the same affinities per dataset.\n\n")
    notes = {r["dataset"]: r["note"] for r in rows}
    tail = "\nInputs: " + "; ".join(f"**{k}**: {v}" for k, v in notes.items()) + (
        ". `auto` fragments are per-section (2D) on anisotropic data; the 3D row runs the same volume with 3D "
        "fragments. Degraded ground-truth affinities are equally good along z and in-plane, which favours 3D "
        "fragments; the U-Net's z affinities are weaker than its in-plane ones, which favours 2D. *bound* rows: "
        "every fragment given to the ground-truth object it overlaps most (`evaluate.segmentation.fragment_bound`): "
        "the error the fragments leave to any agglomeration.\n")
    (out / "segment_accuracy.md").write_text(head + markdown(rows) + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
