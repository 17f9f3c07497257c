"""Synaptic cleft detection on real ssTEM: the vnc-sstem stack (Gerhard et al. 2013), sections 00-07 train, 08-11 test.

Three detectors:

* ``unet``: the project's U-Net trained with ``connectomix.train`` on sections 00-06 (cleft channel; the affinity
  targets come from 3D components of the non-membrane mask, as the dataset has no neuron ids), in-plane kernels
  only (``UNET_PARAMS``; cached under benchmarks/out/vnc-unet, resumable).

and two baselines:

* ``darkness``: Gaussian-smoothed darkness (255 - grey, sigma 4 px at half resolution) thresholded; synaptic
  densities are among the darkest structures, but so are mitochondria and membranes.
* ``pixel-mlp``: a per-pixel classifier on 2D filter-bank features (Gaussian, gradient magnitude, Laplacian of
  Gaussian, Hessian eigenvalues, local standard deviation at several scales; half resolution, 9.2 nm pixels): a
  2-hidden-layer MLP (torch, CPU) trained on class-balanced pixel samples of sections 00-06.

For both, the threshold and the minimum object area are chosen on section 07 (validation, object F1), then
frozen for the test sections 08-11. Objects are the 2D connected components of each section (the ground truth's
too). Metrics on the test sections: object precision/recall/F1 with the pipeline's metric
(:func:`connectomix.evaluate.synapses.match_points`: one-to-one Hungarian matching of object centroids within
200 nm; z = section x 50 nm) and pixel precision/recall/F1.

Writes ``benchmarks/results/synapse_detection.{json,md}``. Skips (exit 0, with a message) when the data folder is
absent.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data" / "vnc-sstem"
RESULTS = HERE / "results"
PIXEL_NM = 4.6 * 2  # after 2x downsampling
SECTION_NM = 50.0
TOLERANCE_NM = 200.0
TRAIN, VALID, TEST = list(range(0, 7)), [7], [8, 9, 10, 11]

sys.path.insert(0, str(REPO / "src"))


def load(i: int):
    from PIL import Image

    raw = np.asarray(Image.open(DATA / "raw" / f"{i:02d}.tif"), np.float32)
    syn = np.asarray(Image.open(DATA / "synapses" / f"{i:02d}.png")) > 0
    # 2x mean-downsampling of the image, any-of for the mask
    raw = raw.reshape(512, 2, 512, 2).mean(axis=(1, 3))
    syn = syn.reshape(512, 2, 512, 2).any(axis=(1, 3))
    return raw, syn


def features(raw: np.ndarray) -> np.ndarray:
    """(pixels, n) float32 filter-bank features of one section."""
    from scipy import ndimage

    img = (raw - raw.mean()) / (raw.std() + 1e-6)
    out = []
    for s in (1, 2, 4, 8):
        g = ndimage.gaussian_filter(img, s)
        out.append(g)
        out.append(ndimage.gaussian_gradient_magnitude(img, s))
        out.append(ndimage.gaussian_laplace(img, s))
        out.append(np.sqrt(np.maximum(ndimage.gaussian_filter(img**2, s) - g**2, 0)))
    for s in (2, 4):
        hyy = ndimage.gaussian_filter(img, s, order=(2, 0))
        hxx = ndimage.gaussian_filter(img, s, order=(0, 2))
        hxy = ndimage.gaussian_filter(img, s, order=(1, 1))
        tr, det = hxx + hyy, hxx * hyy - hxy**2
        disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
        out += [tr / 2 + disc, tr / 2 - disc]
    return np.stack(out, axis=-1).reshape(-1, len(out)).astype(np.float32)


def objects(mask: np.ndarray, min_area: int):
    """2D components of a mask, with their centroids (pixels) and areas; small ones dropped."""
    import cc3d

    lab = cc3d.connected_components(mask, connectivity=8)
    n = int(lab.max())
    if n == 0:
        return lab, np.zeros((0, 2))
    flat = lab.ravel()
    area = np.bincount(flat, minlength=n + 1)
    yy, xx = np.indices(mask.shape)
    cy = np.bincount(flat, weights=yy.ravel(), minlength=n + 1)
    cx = np.bincount(flat, weights=xx.ravel(), minlength=n + 1)
    keep = np.nonzero(area[1:] >= min_area)[0] + 1
    lut = np.zeros(n + 1, lab.dtype)
    lut[keep] = keep
    return lut[lab], np.stack([cy[keep] / area[keep], cx[keep] / area[keep]], axis=1)


def score(probs: dict, truth: dict, threshold: float, min_area: int) -> dict:
    """Object (centroid matching) and pixel P/R/F1 over the given sections."""
    from connectomix.evaluate.synapses import match_points, prf

    pred_pts, gt_pts, tp_px, pred_px, gt_px = [], [], 0, 0, 0
    for i, p in probs.items():
        lab, cen = objects(p > threshold, min_area)
        _, gcen = objects(truth[i], 1)
        pred_pts += [(i * SECTION_NM, y * PIXEL_NM, x * PIXEL_NM) for y, x in cen]
        gt_pts += [(i * SECTION_NM, y * PIXEL_NM, x * PIXEL_NM) for y, x in gcen]
        m = lab > 0
        tp_px += int((m & truth[i]).sum())
        pred_px += int(m.sum())
        gt_px += int(truth[i].sum())
    matched, _ = match_points(np.array(pred_pts).reshape(-1, 3), np.array(gt_pts).reshape(-1, 3), TOLERANCE_NM)
    obj = prf(len(matched), len(pred_pts), len(gt_pts))
    px = prf(tp_px, pred_px, gt_px)
    return {"object_precision": obj["precision"], "object_recall": obj["recall"], "object_f1": obj["f1"],
            "n_pred": len(pred_pts), "n_gt": len(gt_pts), "n_matched": int(len(matched)),
            "pixel_precision": px["precision"], "pixel_recall": px["recall"], "pixel_f1": px["f1"]}


def tune(probs: dict, truth: dict) -> tuple[float, int]:
    """Threshold and minimum area with the best validation object F1 (ties: pixel F1)."""
    best = None
    for t in np.linspace(0.05, 0.95, 19):
        for a in (10, 25, 50, 100, 200, 400):
            s = score(probs, truth, t, a)
            key = (s["object_f1"], s["pixel_f1"])
            if best is None or key > best[0]:
                best = (key, float(t), a)
    return best[1], best[2]


UNET_PARAMS = {
    "seed": 0, "iterations": 6000, "output_shape": [4, 96, 96], "validation_fraction": 0.0, "checkpoint_every": 100,
    "max_class_weight": 5.0, "synapse_max_class_weight": 50.0, "synapse_sample_prob": 0.5,
    "augment": {"misalign_prob": 0.0, "missing_section_prob": 0.0},
    "model": {"num_fmaps": 8, "fmap_inc_factor": 2, "downsample_factors": [[1, 2, 2], [1, 2, 2], [1, 2, 2]],
              "kernel_sizes": [[1, 3, 3], [1, 3, 3], [1, 3, 3], [1, 3, 3]], "synapses": True},
}


def unet_probs(data: dict, iterations: int) -> tuple[dict, dict]:
    """Cleft probabilities of every section from a U-Net trained on TRAIN (see the module docstring)."""
    import cc3d
    from PIL import Image

    from connectomix.models import load_checkpoint
    from connectomix.predict import predict_volume
    from connectomix.train import TrainData, merge_params, train

    raw = np.stack([np.clip(np.rint(data[i][0]), 0, 255).astype(np.uint8) for i in sorted(data)])
    membranes = np.stack([np.asarray(Image.open(DATA / "membranes" / f"{i:02d}.png")).reshape(512, 2, 512, 2)
                          .any(axis=(1, 3)) for i in TRAIN])
    labels = cc3d.connected_components(~membranes, connectivity=6).astype(np.uint64)
    clefts = np.stack([data[i][1] for i in TRAIN])
    synapse = np.zeros((3, *clefts.shape), bool)
    synapse[0] = clefts
    train_data = TrainData(raw[:len(TRAIN)], labels, (SECTION_NM, PIXEL_NM, PIXEL_NM), synapse, (True, False, False),
                           {"source": "vnc-sstem sections 00-06, 2x downsampled"})
    out_dir = HERE / "out" / "vnc-unet"
    start = time.perf_counter()
    meta = train(train_data, merge_params({**UNET_PARAMS, "iterations": iterations}), out_dir, device="auto",
                 threads=2, progress=True, extra_meta={"command": "python benchmarks/synapse_detection.py"})
    info = {"iterations": meta["iterations"], "train_seconds_this_run": round(time.perf_counter() - start, 1),
            "train_seconds_total": meta["training"]["seconds"]}
    model, _ = load_checkpoint(out_dir)
    _, syn = predict_volume(model, raw)
    return {i: syn[0][k] for k, i in enumerate(sorted(data))}, info


def train_mlp(x: np.ndarray, y: np.ndarray, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y.astype(np.float32))
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                              torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(12):
        for idx in torch.randperm(len(xt), generator=gen).split(1024):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[idx])[:, 0], yt[idx])
            loss.backward()
            opt.step()

    def predict(f: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(net(torch.from_numpy((f - mean) / std))[:, 0]).numpy()

    return predict


# --- end to end on ground-truth-derived synapse maps (synthetic tissue, and the phantom when it exists) -------------


def synthetic_tissue(shape=(32, 256, 256), n_cells=60, n_synapses=80, seed=0, voxel_size=(40.0, 8.0, 8.0)):
    """Voronoi cells with 1-voxel membranes; clefts are membrane patches (radius 150 nm) between two cells.

    Returns ``labels, clefts, synapses`` (``id, pre, post, ctr_*_nm`` as ``gt/synapses.parquet``).
    """
    import cc3d
    import pandas as pd
    from scipy import ndimage

    from connectomix.synthetic.segment import voronoi_labels

    rng = np.random.default_rng(seed)
    labels = voronoi_labels(shape, n_cells, seed=seed, anisotropy=voxel_size, membrane=1)
    contacts = {}
    for axis in (1, 2):
        lo = [slice(None)] * 3
        mid = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], mid[axis], hi[axis] = slice(None, -2), slice(1, -1), slice(2, None)
        a, m, b = labels[tuple(lo)], labels[tuple(mid)], labels[tuple(hi)]
        hit = (m == 0) & (a > 0) & (b > 0) & (a != b)
        idx = np.argwhere(hit)
        idx[:, axis] += 1
        for (u, v), p in zip(np.sort(np.stack([a[hit], b[hit]], 1), axis=1).tolist(), idx):
            contacts.setdefault((u, v), []).append(p)
    clefts = np.zeros(shape, np.uint64)
    rows = []
    pairs = list(contacts)
    vs = np.asarray(voxel_size)
    # pairs drawn with replacement (a few favoured ones), so pairs get varying synapse counts
    weights = rng.pareto(1.5, len(pairs)) + 0.1
    for k in rng.choice(len(pairs), size=40 * n_synapses, p=weights / weights.sum()):
        if len(rows) >= n_synapses:
            break
        u, v = pairs[k]
        pts = np.array(contacts[(u, v)])
        centre = pts[rng.integers(len(pts))]
        lo = np.maximum(centre - np.ceil(200 / vs).astype(int), 0)
        hi = np.minimum(centre + np.ceil(200 / vs).astype(int) + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub = labels[box]
        grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1)
        near = np.linalg.norm((grid - centre) * vs, axis=-1) <= 150
        ring = np.ones((1, 3, 3), bool)
        # membrane voxels touching both cells (in-plane, 8-neighbourhood) near the centre
        local = near & (sub == 0) & ndimage.binary_dilation(sub == u, ring) & ndimage.binary_dilation(sub == v, ring)
        if local.sum() < 40 or cc3d.connected_components(local, connectivity=26).max() != 1:
            continue
        mask = np.zeros(shape, bool)
        mask[box] = local
        if (ndimage.binary_dilation(mask, np.ones((3, 3, 3), bool)) & (clefts > 0)).any():
            continue
        patch = np.argwhere(mask)
        sid = len(rows) + 1
        clefts[mask] = sid
        pre, post = (u, v) if (u + v + seed) % 2 else (v, u)  # one direction per pair
        ctr = patch.mean(0) * vs
        rows.append({"id": sid, "pre": pre, "post": post, "ctr_z_nm": ctr[0], "ctr_y_nm": ctr[1], "ctr_x_nm": ctr[2]})
    syn = pd.DataFrame(rows)
    syn[["id", "pre", "post"]] = syn[["id", "pre", "post"]].astype(np.uint64)
    return labels, clefts, syn


def end_to_end(labels, clefts, gt_syn, gt_edges, neuron_ids, voxel_size, work, noise=0.1, block_shape=(16, 128, 128),
               params=None, segment=False):
    """GT-derived maps (noise ``noise``) -> detect_synapses -> metrics. The segmentation is the ground truth, or with
    ``segment`` the project's segmentation of degraded ground-truth affinities (ids mapped to GT by overlap)."""
    import pandas as pd

    from connectomix import connectome, io, synapses
    from connectomix.evaluate import connectome as ev_con
    from connectomix.evaluate import synapses as ev_syn
    from connectomix.synthetic.synapse_maps import maps_from_ground_truth

    maps = maps_from_ground_truth(labels, clefts, gt_syn, voxel_size, noise=noise, seed=1)
    vol = work / "v.zarr"
    io.write_full(vol, "synapse_maps", maps, (3, 8, 64, 64), voxel_size, channels=("cleft", "pre", "post"))
    if segment:
        from connectomix.segment.stitch import segment_volume
        from connectomix.synthetic.segment import affinities_from_labels, degrade, write_test_volume

        write_test_volume(vol, degrade(affinities_from_labels(labels), seed=0), voxel_size, (8, 64, 64), gt=labels)
        segment_volume(vol, work / "segment", None, block_shape, (8, 64, 64))
        seg = np.asarray(io.open_array(vol, "segmentation")[...])
        neuron_ids = np.unique(seg[seg > 0])
    else:
        io.write_full(vol, "segmentation", labels, (8, 64, 64), voxel_size, is_label=True)
        seg = labels
    summary = synapses.detect_synapses(vol, work / "syn", params, block_shape)
    pred = pd.read_parquet(work / "syn" / "synapses.parquet")
    mapping = ev_syn.segment_to_gt(seg, labels)
    m = ev_syn.evaluate(pred, gt_syn, TOLERANCE_NM, mapping)
    somata = pd.DataFrame({"id": np.asarray(neuron_ids, np.uint64), "is_neuron": True})
    for c in ("soma_z_nm", "soma_y_nm", "soma_x_nm", "soma_radius_nm"):
        somata[c] = 0.0
    neurons = connectome.neuron_table(None, pred, somata)
    edges, _ = connectome.edge_tables(pred, neurons)
    e = ev_con.evaluate(edges, gt_edges, mapping)
    return {"noise": noise, "params": params or {}, "status": summary["status"], **{f"synapses.{k}": v for k, v in m.items()},
            **{f"connectome.{k}": v for k, v in e.items()}}


def ground_truth_maps() -> dict:
    import tempfile

    out = {}
    vs = (40.0, 8.0, 8.0)
    labels, clefts, syn = synthetic_tissue(voxel_size=vs)
    edges = syn.groupby(["pre", "post"]).size().rename("n_synapses").reset_index()
    for noise in (0.1, 0.25):
        with tempfile.TemporaryDirectory() as tmp:
            out[f"voronoi_noise{noise}"] = end_to_end(labels, clefts, syn, edges, np.unique(labels[labels > 0]), vs,
                                                      Path(tmp), noise)
    with tempfile.TemporaryDirectory() as tmp:
        out["voronoi_noise0.1_segmented"] = end_to_end(labels, clefts, syn, edges, None, vs, Path(tmp), 0.1,
                                                       segment=True)
    try:
        from connectomix.phantom import PhantomParams, generate
    except ImportError:
        out["phantom"] = "skipped: connectomix.phantom not available yet"
        return out
    ph = generate(PhantomParams.from_dict({"seed": 7}), voxel_size=vs)  # the default config's phantom
    for noise in (0.1, 0.25):
        with tempfile.TemporaryDirectory() as tmp:
            out[f"phantom_noise{noise}"] = end_to_end(ph.labels, ph.clefts, ph.synapses, ph.edges, ph.neurons["id"],
                                                      vs, Path(tmp), noise)
    return out


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet-iterations", type=int, default=UNET_PARAMS["iterations"])
    parser.add_argument("--unet-only", action="store_true",
                        help="run only the U-Net; keep the other rows from the previous results")
    args = parser.parse_args()
    if not (DATA / "raw").is_dir() or not (DATA / "synapses").is_dir():
        print(f"synapse_detection: skipped, vnc-sstem data not found at {DATA}")
        return 0
    from scipy import ndimage

    os.environ.setdefault("OMP_NUM_THREADS", "2")
    start = time.perf_counter()
    data = {i: load(i) for i in TRAIN + VALID + TEST}
    truth = {i: s for i, (_, s) in data.items()}
    previous = {}
    if args.unet_only and (RESULTS / "synapse_detection.json").exists():
        previous = json.loads((RESULTS / "synapse_detection.json").read_text())
    results = {}

    probs, info = unet_probs(data, args.unet_iterations)
    t, a = tune({i: probs[i] for i in VALID}, truth)
    results["unet"] = {"threshold": t, "min_area_px": a, **info, **score({i: probs[i] for i in TEST}, truth, t, a)}
    if args.unet_only and previous:
        results.update({k: v for k, v in previous["results"].items() if k != "unet"})
        return _write(results, previous["ground_truth_maps"], start)

    # Baseline 1: smoothed darkness.
    dark = {i: ndimage.gaussian_filter((255 - r) / 255.0, 4) for i, (r, _) in data.items()}
    t, a = tune({i: dark[i] for i in VALID}, truth)
    results["darkness"] = {"threshold": t, "min_area_px": a, **score({i: dark[i] for i in TEST}, truth, t, a)}

    # Baseline 2: filter bank + pixel MLP.
    rng = np.random.default_rng(0)
    xs, ys = [], []
    feats = {}
    for i in TRAIN + VALID + TEST:
        feats[i] = features(data[i][0])
    for i in TRAIN:
        pos = np.flatnonzero(truth[i].ravel())
        neg = rng.choice(np.flatnonzero(~truth[i].ravel()), size=min(len(pos) * 4 + 2000, truth[i].size), replace=False)
        for idx, label in ((pos, 1), (neg, 0)):
            xs.append(feats[i][idx])
            ys.append(np.full(len(idx), label))
    x, y = np.concatenate(xs), np.concatenate(ys)
    predict = train_mlp(x, y)
    probs = {i: ndimage.gaussian_filter(predict(feats[i]).reshape(512, 512), 1.5) for i in VALID + TEST}
    t, a = tune({i: probs[i] for i in VALID}, truth)
    results["pixel-mlp"] = {"threshold": t, "min_area_px": a, "train_pixels": int(len(y)),
                            **score({i: probs[i] for i in TEST}, truth, t, a)}

    return _write(results, ground_truth_maps(), start)


def _write(results: dict, gt_maps: dict, start: float) -> int:
    payload = {"ground_truth_maps": gt_maps, "dataset": "vnc-sstem (sections 00-06 train, 07 validation, 08-11 test; 2x downsampled, 9.2 nm px)",
               "tolerance_nm": TOLERANCE_NM, "results": results, "seconds": round(time.perf_counter() - start, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synapse_detection.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = ["# Synaptic cleft detection on vnc-sstem (test sections 08-11)", "",
             "Objects: 2D connected components per section, matched one-to-one by centroid within 200 nm "
             "(Hungarian). Threshold and minimum area chosen on section 07. `unet`: the project's U-Net, trained on "
             "sections 00-06; the others are baselines.", "",
             "| detector | object P | object R | object F1 | pred / true objects | pixel P | pixel R | pixel F1 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['object_precision']:.3f} | {r['object_recall']:.3f} | {r['object_f1']:.3f} | "
                     f"{r['n_pred']} / {r['n_gt']} | {r['pixel_precision']:.3f} | {r['pixel_recall']:.3f} | "
                     f"{r['pixel_f1']:.3f} |")
    lines += ["", "## End to end on ground-truth-derived synapse maps (segmentation = ground truth; `_segmented`: the project's segmentation of degraded ground-truth affinities, ids mapped by overlap)", "",
              "| volume | synapse P | synapse R | synapse F1 | partner accuracy | edge P | edge R | edge F1 | count r |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in gt_maps.items():
        if isinstance(r, str):
            lines.append(f"| {name} | {r} | | | | | | | |")
            continue
        pear = r["connectome.synapse_count_pearson"]
        lines.append(f"| {name} | {r['synapses.precision']:.3f} | {r['synapses.recall']:.3f} | {r['synapses.f1']:.3f} | "
                     f"{r['synapses.partner_accuracy']:.3f} | {r['connectome.edge_precision']:.3f} | "
                     f"{r['connectome.edge_recall']:.3f} | {r['connectome.edge_f1']:.3f} | "
                     f"{'n/a' if pear is None else f'{pear:.3f}'} |")
    (RESULTS / "synapse_detection.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
