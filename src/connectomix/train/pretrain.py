"""Self-supervised pretraining of the U-Net on unlabeled raw EM: masked-volume reconstruction.

Random cubes (``train.pretrain.mask_size`` voxels, a ``mask_fraction`` of them) of each normalized, augmented input
patch are replaced by noise (or zero) and the network learns to give back the grey values of the masked voxels
(mean squared error on the masked voxels of its output only). The network is the supervised one (same
:class:`~connectomix.models.UNet` and architecture, from ``train.model``); output channel 0 of its head is the
reconstruction. Patches, per-volume input normalization and augmentation are those of supervised training
(:func:`~connectomix.train.data.sample_batch` on the raw with no labels), so the backbone sees its inputs exactly
as fine-tuning and inference will.

The checkpoint (``connectomix.models.save_checkpoint``) records the architecture, the input normalization, the
pretraining data and a top-level ``pretrain`` record (the marker that
:func:`connectomix.train.loop.init_weights` uses to re-initialize the head when a supervised run starts from
it with ``train.init_from``). Iteration ``i`` draws from ``numpy.random.default_rng([seed, i])``, so a resumed
run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from connectomix.train.data import TrainData, sample_batch
from connectomix.train.loop import learning_rate, merge_params, prepare_run



def raw_data(raw, voxel_size, description: dict | None = None) -> TrainData:
    """Unlabeled raw (numpy or zarr, (z, y, x)) as :class:`TrainData` (labels: a zero view, no memory)."""
    if getattr(raw, "ndim", 0) != 3:
        raise ValueError(f"pretraining raw must be a (z, y, x) array, got shape {getattr(raw, 'shape', None)}")
    labels = np.broadcast_to(np.zeros((), dtype=np.uint8), raw.shape)
    return TrainData(raw, labels, tuple(float(v) for v in voxel_size), None, (False, False, False),
                     description or {})


def cube_mask(shape, rng, fraction: float, size) -> np.ndarray:
    """Boolean (z, y, x) mask of ``shape``: a grid of ``size`` cubes at a random phase, each set with probability
    ``fraction``."""
    size = [max(1, int(s)) for s in size]
    phase = [int(rng.integers(s)) for s in size]
    cells = [-(-(n + p) // s) for n, p, s in zip(shape, phase, size)]
    grid = rng.random(cells) < fraction
    full = grid.repeat(size[0], 0).repeat(size[1], 1).repeat(size[2], 2)
    return full[phase[0]:phase[0] + shape[0], phase[1]:phase[1] + shape[1], phase[2]:phase[2] + shape[2]]


def masked_batch(data, arch, out_shape, params: dict, rng):
    """A pretraining batch: (masked input (N, 1, *in), target (N, 1, *out): the unmasked input's central part,
    loss mask (N, 1, *out): the masked voxels), float32."""
    pre = params["pretrain"]
    raw = sample_batch(data, arch, out_shape, int(params["batch_size"]), rng, params)[0]
    ctx = arch.context
    centre = (slice(None), slice(None)) + tuple(slice(c, c + o) for c, o in zip(ctx, out_shape))
    target = raw[centre].copy()
    mask = np.stack([cube_mask(raw.shape[2:], rng, pre["mask_fraction"], pre["mask_size"])[None]
                     for _ in range(raw.shape[0])])
    fill = rng.uniform(-1.0, 1.0, size=raw.shape).astype(np.float32) if pre["mask_fill"] == "noise" else 0.0
    masked = np.where(mask, fill, raw).astype(np.float32)
    return masked, target, mask[centre].astype(np.float32)


def masked_loss(model, batch):
    """Mean squared error of output channel 0 against the target on the masked voxels (a torch scalar)."""
    import torch

    x, y, m = (torch.as_tensor(a) for a in batch)
    dev = next(model.parameters()).device
    x, y, m = x.to(dev), y.to(dev), m.to(dev)
    out = model(x)[:, :1]
    return ((out - y) ** 2 * m).sum() / m.sum().clamp(min=1)


def pretrain(data: TrainData | list, params: dict | None, out_dir, device: str = "auto", threads: int = 0,
             resume: bool = True, progress: bool = True, extra_meta: dict | None = None) -> dict:
    """Pretrain (or resume) ``train.model`` by masked reconstruction of ``data``'s raw; writes the checkpoint
    folder ``out_dir`` and returns its JSON.

    ``data``: :class:`TrainData` (see :func:`raw_data`) or a list (patches in proportion to their voxels);
    ``params``: the `train` section (``train.pretrain`` says the masking and the number of iterations; learning
    rate, batch size, patch size, augmentation, normalization and model are those of supervised training).
    """
    import torch
    from tqdm import tqdm

    from connectomix.models import UNet, load_checkpoint, save_checkpoint
    from connectomix.provenance import config_hash

    params = merge_params(params)
    pre = params["pretrain"]
    total = int(pre["iterations"])
    schedule = {**params, "iterations": total}
    norm, datasets, dev, arch, out_shape = prepare_run(data, params, device, threads)
    out = Path(out_dir)
    state_path = out / "training_state.pt"
    start, seconds, history = 0, 0.0, []
    if resume and state_path.exists() and (out / "checkpoint.json").exists():
        model, meta = load_checkpoint(out, map_location="cpu")
        if meta["architecture"] != arch.to_dict() or "pretrain" not in meta:
            raise ValueError(f"cannot resume {out}: not a pretraining checkpoint of the requested architecture")
        start, seconds = int(meta["iterations"]), float(meta["training"].get("seconds", 0.0))
        history = list(meta.get("loss_history", []))
    else:
        torch.manual_seed(int(params["seed"]))
        model = UNet(arch)
    if start > total:
        raise ValueError(f"{out} already holds {start} pretraining iterations, more than the {total} requested")
    model.input_normalization = norm
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate(schedule, start),
                            weight_decay=params["weight_decay"])
    if start:
        opt.load_state_dict(torch.load(state_path, weights_only=True, map_location=dev)["optimizer"])
    described = [dict(d.description or {}, shape=list(d.raw.shape), voxel_size=list(d.voxel_size),
                      input_range=[round(float(r), 3) for r in d.value_range]) for d in datasets]
    description = described[0] if len(described) == 1 else {"datasets": described}

    def save(iteration):
        meta = {"iterations": iteration,
                "pretrain": {"task": "masked reconstruction", "output_channel": 0, **pre},
                "training": {"data": description, "params": params, "config_hash": config_hash(params),
                             "seed": params["seed"], "device": str(dev), "seconds": round(seconds, 1),
                             "output_shape": list(out_shape), "init": None, **(extra_meta or {})},
                "validation": {"masked_mse": history[-1]["masked_mse"]} if history else {},
                "loss_history": history}
        payload = save_checkpoint(out, model, meta)
        tmp = out / "training_state.pt.tmp"
        torch.save({"optimizer": opt.state_dict(), "iteration": iteration}, tmp)
        os.replace(tmp, state_path)
        return payload

    train_data = datasets if len(datasets) > 1 else datasets[0]
    every = int(params["checkpoint_every"])
    window: list[float] = []
    payload = None
    bar = tqdm(range(start, total), initial=start, total=total, disable=not progress, desc="pretrain",
               dynamic_ncols=True)
    for it in bar:
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = learning_rate(schedule, it)
        batch = masked_batch(train_data, arch, out_shape, params, np.random.default_rng([int(params["seed"]), it]))
        loss = masked_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - t0
        window.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(window[-50:]):.4f}")
        done = it + 1
        if done % every == 0 or done == total:
            history.append({"iteration": done, "masked_mse": round(float(np.mean(window)), 5)})
            window = []
            payload = save(done)
    bar.close()
    if payload is None:  # already pretrained to `iterations`
        payload = json.loads((out / "checkpoint.json").read_text()) if (out / "checkpoint.json").exists() \
            else save(start)
    return payload


# --- ``python -m connectomix pretrain`` -----------------------------------------------------------------------


def add_arguments(parser) -> None:
    """The options of ``connectomix pretrain``."""
    parser.add_argument("--raw", nargs="+", required=True, metavar="PATH[:KEY]",
                        help="unlabeled raw volumes: an OME-Zarr dataset (array KEY, default raw; its voxel size), an "
                             "HDF5 file (dataset KEY, default stack), a zarr array (or KEY inside a zarr group), a "
                             ".npy file, or a folder of section images (.png/.tif, name order)")
    parser.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        help="voxel size in nm of the raw that is not an OME-Zarr dataset")
    parser.add_argument("--out", required=True, help="checkpoint folder to write (weights.pt, checkpoint.json)")
    parser.add_argument("--params", default="{}",
                        help="the `train` config section as JSON (defaults filled); train.pretrain says the masking "
                             "and the iterations, train.model the network")
    parser.add_argument("--device", default="auto", help="auto (GPU when present, else CPU), cpu, cuda ...")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_raw(spec: str, voxel_size=None) -> TrainData:
    """The raw that ``spec`` (``PATH[:KEY]``, see ``connectomix pretrain --help``) names, as :func:`raw_data`."""
    from connectomix import io
    from connectomix.evaluate.segmentation import load_ground_truth

    path, key = spec, None
    if not Path(spec).exists() and ":" in spec:
        path, key = spec.rsplit(":", 1)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--raw {spec}: no file or folder {path}")
    if p.is_dir() and io.has_array(p, key or "raw"):
        raw, vs = io.open_array(p, key or "raw"), io.read_meta(p, key or "raw").voxel_size
    else:
        if voxel_size is None:
            raise ValueError(f"--raw {spec} is not an OME-Zarr dataset: give its voxel size with --voxel-size Z Y X")
        vs = voxel_size
        if p.suffix == ".npy":
            raw = np.load(p, mmap_mode="r")
        elif p.is_dir() and not key and not (p / ".zarray").exists():
            from skimage.io import imread

            files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".tif", ".tiff"))
            if not files:
                raise ValueError(f"--raw {spec}: no OME-Zarr array 'raw', zarr array or section images in {p}")
            raw = np.stack([np.asarray(imread(f)) for f in files])
        else:
            fmt = "hdf5" if p.suffix in (".h5", ".hdf5", ".hdf") else "zarr"
            raw = load_ground_truth(gt_file=p, gt_key=key, gt_format=fmt)
    if getattr(raw, "ndim", 0) != 3:
        raise ValueError(f"--raw {spec}: expected a (z, y, x) array, got shape {list(getattr(raw, 'shape', []))}")
    return raw_data(raw, vs, {"raw": spec})


def run(args) -> int:
    """Load the raw volumes, pretrain (or resume) and print a one-line summary."""
    from connectomix.train.cli import launch, parse_params
    from connectomix.train.data import at_pixel_nm

    params, merged = parse_params(args)
    data = [load_raw(spec, args.voxel_size) for spec in args.raw]
    data = [at_pixel_nm(d, merged["pixel_nm"]) for d in data]
    inputs = (f"--raw {' '.join(args.raw)} "
              + (f"--voxel-size {' '.join(f'{v:g}' for v in args.voxel_size)} " if args.voxel_size else ""))
    payload, seconds = launch("pretrain", inputs, pretrain, data, params, merged, args)
    print(f"pretrain: {payload['iterations']} iterations, masked MSE {payload['validation'].get('masked_mse')} "
          f"({seconds:.0f} s) -> {args.out}")
    return 0
