"""The training loop: parameters, learning-rate schedule, class-balanced loss, validation, checkpoints.

Determinism: weights are initialised from ``seed``; iteration ``i`` draws its samples from
``numpy.random.default_rng([seed, i])``, so a resumed run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from connectomix import config
from connectomix.evaluate.boundaries import boundary_map, boundary_prf, gt_boundaries, prf
from connectomix.evaluate.synapses import cleft_object_prf
from connectomix.predict import grey_sample, predict_volume, resolve_device
from connectomix.provenance import config_hash
from connectomix.train.data import TrainData, sample_batch
from connectomix.train.targets import partner_zone


def merge_params(params: dict | None) -> dict:
    """The `train` config section's defaults (from the schema) overlaid with ``params``, without the workflow's
    keys (enabled, dataset, device, threads, gpu); unknown keys raise ``ValueError``."""
    merged = config.resolve("train", params, omit=("enabled", "dataset", "device", "threads", "gpu"))
    zone = merged["partner_zone_nm"]
    if zone is not None and not (isinstance(zone, (int, float)) and zone > 0):
        raise ValueError(f"train parameter partner_zone_nm must be null or a distance > 0 nm, got {zone!r}")
    return merged


def learning_rate(params: dict, iteration: int) -> float:
    """The learning rate at 0-based ``iteration``: ``constant``, or ``cosine`` from ``learning_rate`` down to
    ``learning_rate * min_lr_fraction`` at the last of ``iterations`` (a function of the iteration alone, so a
    resumed run follows the same schedule)."""
    base = float(params["learning_rate"])
    schedule = params["lr_schedule"]
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    low = base * float(params["min_lr_fraction"])
    progress = iteration / max(1, int(params["iterations"]) - 1)
    return low + 0.5 * (base - low) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def balanced_bce(logits, target, mask, max_weight=20.0):
    """Per-channel class-balanced BCE: positives and negatives of each channel weigh half each.

    Each class weight is clipped at ``max_weight``: a number, or one per channel (a sequence or tensor).
    """
    import torch  # lazy: see train()
    import torch.nn.functional as F

    max_weight = torch.as_tensor(max_weight, dtype=logits.dtype, device=logits.device)

    dims = (0, 2, 3, 4)
    pos = (target * mask).sum(dims)
    neg = ((1 - target) * mask).sum(dims)
    total = pos + neg
    classes = (pos > 0).float() + (neg > 0).float()  # a channel with one class present weighs it 1
    w_pos = torch.minimum(total / (classes.clamp(min=1) * pos.clamp(min=1)), max_weight).view(1, -1, 1, 1, 1)
    w_neg = torch.minimum(total / (classes.clamp(min=1) * neg.clamp(min=1)), max_weight).view(1, -1, 1, 1, 1)
    weight = mask * (target * w_pos + (1 - target) * w_neg)
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    return loss / mask.sum().clamp(min=1)


def evaluate(model, data: TrainData, params: dict, device="cpu") -> dict:
    """Validation metrics of ``model`` on ``data`` (predicted as a whole volume, like inference does)."""
    import torch  # lazy: see train()

    arch = model.arch
    model.eval()
    aff, syn = predict_volume(model, data.raw, device=device, batch_size=1, tile_shape=(24, 192, 192),
                              value_range=data.value_range)
    target, mask = data.affinity_targets(data.labels, arch.offsets)
    metrics: dict = {}
    # Edges: a cut (affinity < 0.5) is the positive class; nearest-neighbour channels.
    e = prf(aff[:3] < 0.5, ~target[:3], mask[:3])
    metrics.update({f"edge_{k}": v for k, v in e.items()})
    b = boundary_prf(boundary_map(aff, "min") > 0.5, gt_boundaries(data.labels), tolerance=1)
    metrics.update({f"boundary_{k}": v for k, v in b.items()})
    logits = torch.logit(torch.from_numpy(np.clip(aff, 1e-4, 1 - 1e-4)))[None]
    metrics["loss_affinities"] = float(balanced_bce(
        logits, torch.from_numpy(target[None].astype(np.float32)), torch.from_numpy(mask[None].astype(np.float32)),
        params["max_class_weight"]))
    if len(arch.synapse_channels) and data.synapse is not None:
        zone = (partner_zone(data.synapse[0], data.voxel_size, params["partner_zone_nm"])
                if params["partner_zone_nm"] is not None else None)
        for c, name in enumerate(("cleft", "pre", "post")):
            if data.synapse_valid[c]:
                m = prf(syn[c] > 0.5, data.synapse[c], zone if c else None)
                metrics.update({f"{name}_{k}": v for k, v in m.items()})
        if data.synapse_valid[0]:
            m = cleft_object_prf(syn[0] > 0.5, data.synapse[0], data.voxel_size)
            metrics.update({f"cleft_objects_{k}": v for k, v in m.items()})
    model.train()
    return {k: round(float(v), 5) for k, v in metrics.items()}


def _split(data: TrainData, fraction: float) -> tuple[TrainData, TrainData | None]:
    z = data.raw.shape[0]
    n_val = int(round(z * fraction))
    if fraction <= 0 or n_val < 1:
        return data, None
    if z - n_val < 1:
        raise ValueError(f"validation_fraction {fraction} leaves no training sections of {z}")
    return data.slab(0, z - n_val), data.slab(z - n_val, z)


def prepare_run(data, params: dict, device, threads: int):
    """What a training or pretraining run sets up first: ``(normalization, datasets, device, architecture,
    output shape)``: :func:`normalized_datasets`, the torch device (deterministic algorithms on), the architecture
    of ``params['model']`` and the valid output shape nearest ``params['output_shape']``."""
    import torch

    from connectomix.models import architecture_from_params

    norm, datasets = normalized_datasets(data, params)
    dev = resolve_device(device, threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    arch = architecture_from_params(params["model"])
    return norm, datasets, dev, arch, arch.valid_output_shape(params["output_shape"])


def normalized_datasets(data, params: dict) -> tuple[dict, list]:
    """(``params``' input normalization, the training volume(s) of ``data`` as a list, each with the
    ``value_range`` that normalization gives it: percentiles of a :func:`~connectomix.predict.grey_sample`)."""
    from connectomix.models import input_normalization, input_range

    norm = input_normalization({"input_normalization": params["input_normalization"]})
    datasets = list(data) if isinstance(data, (list, tuple)) else [data]
    for d in datasets:
        d.value_range = input_range(grey_sample(d.raw) if norm["method"] != "fixed" else np.zeros(0), norm)
    return norm, datasets


HEAD = "head."  # the output head's tensors (connectomix.models.UNet.head); everything else is the backbone


def init_weights(model, path) -> dict:
    """Start ``model`` from the checkpoint at ``path`` (``train.init_from``); returns the ``init`` record.

    The checkpoint's architecture must equal the model's, or differ only in the output head (affinity offsets,
    synapse channels): then every tensor whose name and shape match is loaded and the rest (the head) keeps its
    fresh initialization. A pretraining checkpoint (:func:`connectomix.train.pretrain.pretrain`) never lends its
    head (a reconstruction, not affinities). The record names the tensors loaded and re-initialized when that is
    not all of them."""
    from connectomix.models import load_checkpoint

    init, meta = load_checkpoint(path, map_location="cpu")
    mine, theirs = model.arch.to_dict(), meta["architecture"]
    head_keys = ("offsets", "synapse_channels")
    if {k: v for k, v in theirs.items() if k not in head_keys} != {k: v for k, v in mine.items() if k not in head_keys}:
        raise ValueError(f"train.init_from {path}: its architecture differs from train.model (beyond the output "
                         f"head); expected {mine}, found {theirs}")
    own, state = model.state_dict(), init.state_dict()
    loaded = [k for k, v in own.items() if k in state and state[k].shape == v.shape
              and not ("pretrain" in meta and k.startswith(HEAD))]
    model.load_state_dict({**own, **{k: state[k] for k in loaded}})
    record = {"from": str(path), "weights_sha256": meta.get("weights_sha256"), "iterations": meta.get("iterations")}
    if len(loaded) < len(own):
        record.update(pretrain="pretrain" in meta, loaded=loaded, reinitialized=[k for k in own if k not in loaded])
    return record


def train(data: TrainData | list, params: dict | None, out_dir, device: str = "auto", threads: int = 0,
          resume: bool = True, progress: bool = True, extra_meta: dict | None = None) -> dict:
    """Train (or resume) a model and write the checkpoint folder ``out_dir``; returns the checkpoint JSON.

    ``data``: one :class:`TrainData` or a list (patches drawn in proportion to their voxels; validation metrics
    per dataset, prefixed ``d0/``, ``d1/`` ...). Each volume's grey values are normalized as
    ``input_normalization`` says (recorded in the checkpoint; predict does the same per volume).
    The last ``validation_fraction`` of the sections (of each volume) is held out for validation. Checkpoints (``weights.pt``,
    ``checkpoint.json`` and ``training_state.pt`` with the optimizer) are written every ``checkpoint_every``
    iterations and at the end; with ``resume`` an existing folder continues from its last iteration.
    """
    # torch and the models built on it load only when training (not for the CLI's --help or the data helpers).
    import torch
    from tqdm import tqdm

    from connectomix.models import UNet, load_checkpoint, save_checkpoint

    params = merge_params(params)
    norm, datasets, dev, arch, out_shape = prepare_run(data, params, device, threads)
    out = Path(out_dir)
    if out_shape[1] != out_shape[2]:
        raise ValueError(f"train output_shape must be square in-plane (y == x), got {out_shape}")
    splits = [_split(d, params["validation_fraction"]) for d in datasets]
    train_data = [t for t, _ in splits] if len(datasets) > 1 else splits[0][0]
    val_sets = [(f"d{i}/" if len(datasets) > 1 else "", v) for i, (_, v) in enumerate(splits) if v is not None]
    val_data = val_sets or None

    def validate(model):
        scores = {}
        for prefix, v in val_sets:
            scores.update({prefix + k: m for k, m in evaluate(model, v, params, dev).items()})
        return scores

    state_path = out / "training_state.pt"
    start = 0
    history: list = []
    init_record = None
    if resume and state_path.exists() and (out / "checkpoint.json").exists():
        model, meta = load_checkpoint(out, map_location="cpu")
        init_record = meta["training"].get("init")
        if meta["architecture"] != arch.to_dict():
            raise ValueError(f"cannot resume {out}: its architecture differs from the requested one")
        start = int(meta["iterations"])
        history = list(meta.get("validation_history", []))
        model.train()
    else:
        torch.manual_seed(int(params["seed"]))
        model = UNet(arch)
        if params["init_from"]:  # same architecture, or a pretrained backbone with a fresh head
            init_record = init_weights(model, params["init_from"])
    model.input_normalization = norm
    class_caps = ([float(params["max_class_weight"])] * len(arch.offsets)
                  + [float(params["synapse_max_class_weight"] or params["max_class_weight"])]
                  * len(arch.synapse_channels))
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate(params, start), weight_decay=params["weight_decay"])
    if start:
        state = torch.load(state_path, weights_only=True, map_location=dev)
        opt.load_state_dict(state["optimizer"])
    total = int(params["iterations"])
    seconds = 0.0
    if start and (out / "checkpoint.json").exists():
        seconds = float(json.loads((out / "checkpoint.json").read_text())["training"].get("seconds", 0.0))
    descriptions = []
    for d, (t, v) in zip(datasets, splits):
        desc = dict(d.description or {})
        desc.update({"shape": list(d.raw.shape), "voxel_size": list(d.voxel_size),
                     "train_sections": [0, int(t.raw.shape[0])],
                     "validation_sections": [int(t.raw.shape[0]), int(d.raw.shape[0])] if v is not None else None,
                     "synapse_channels_with_gt": list(d.synapse_valid) if d.synapse is not None else [],
                     "input_range": [round(float(r), 3) for r in d.value_range]})
        descriptions.append(desc)
    description = descriptions[0] if len(datasets) == 1 else {"datasets": descriptions}
    metrics = history[-1]["metrics"] if history else {}

    # per-section labels only: the z affinities never had a target; predict writes them as 0 (no link)
    untrained = ([c for c, o in enumerate(arch.offsets) if int(o[0]) != 0]
                 if all(d.per_section for d in datasets) else [])

    def save(iteration, metrics):
        meta = {
            "iterations": iteration,
            "training": {"data": description, "params": params, "config_hash": config_hash(params),
                         "seed": params["seed"], "device": str(dev), "seconds": round(seconds, 1),
                         "output_shape": list(out_shape), "init": init_record, **(extra_meta or {})},
            "validation": metrics,
            "validation_history": history,
            "untrained_affinities": untrained,
        }
        payload = save_checkpoint(out, model, meta)
        tmp = out / "training_state.pt.tmp"
        torch.save({"optimizer": opt.state_dict(), "iteration": iteration}, tmp)
        os.replace(tmp, state_path)
        return payload

    if start > total:
        raise ValueError(f"{out} already holds {start} iterations, more than the {total} requested")
    if start == total and start:
        # Stopped exactly here by an earlier (longer or interrupted) run: weights at iteration N do not depend on
        # the requested total, so record this request's parameters and a final validation.
        if val_data is not None and (not history or history[-1]["iteration"] != total):
            metrics = validate(model)
            history.append({"iteration": total, "metrics": metrics})
        return save(total, metrics)
    model.train()
    bar = tqdm(range(start, total), initial=start, total=total, disable=not progress, desc="train",
               dynamic_ncols=True)
    payload = None
    loss_avg = None
    budget = params["max_seconds"]
    run_seconds = 0.0
    for it in bar:
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = learning_rate(params, it)
        rng = np.random.default_rng([int(params["seed"]), it])
        raw, target, mask = sample_batch(train_data, arch, out_shape, int(params["batch_size"]), rng, params)
        x = torch.from_numpy(raw).to(dev)
        y = torch.from_numpy(target).to(dev)
        m = torch.from_numpy(mask).to(dev)
        logits = model(x)
        loss = balanced_bce(logits, y, m, class_caps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step_seconds = time.perf_counter() - t0
        seconds += step_seconds
        run_seconds += step_seconds
        value = float(loss.detach())
        loss_avg = value if loss_avg is None else 0.95 * loss_avg + 0.05 * value
        bar.set_postfix(loss=f"{loss_avg:.4f}")
        done = it + 1
        last = done == total or (budget is not None and run_seconds >= budget)
        if val_data is not None and (done % int(params["validate_every"]) == 0 or last):
            metrics = validate(model)
            metrics["train_loss"] = round(loss_avg, 5)
            history.append({"iteration": done, "metrics": metrics})
            bar.write(f"iteration {done}: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))
        if done % int(params["checkpoint_every"]) == 0 or last:
            payload = save(done, metrics)
        if last:
            break
    bar.close()
    if payload is None:  # nothing left to do (already trained to `iterations`)
        payload = json.loads((out / "checkpoint.json").read_text()) if (out / "checkpoint.json").exists() \
            else save(start, metrics)
    return payload
