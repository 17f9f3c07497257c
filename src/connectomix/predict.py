"""Blockwise U-Net inference: ``affinities`` and ``synapse_maps`` (uint8, value/255 = probability).

Seamless by construction: the network uses valid convolutions, every tile starts on the network's pooling lattice
(multiples of ``Architecture.total_factor`` in global voxel coordinates) and the input outside the volume is the
whole volume's mirror reflection (computed from global coordinates, so a block at the border sees exactly what a
whole-volume pass sees). Each block predicts the tiles covering its write ROI and writes exactly that ROI; a block's
values therefore equal a whole-volume prediction up to float rounding (at most one uint8 step). Test-time
augmentation (``Predictor(augment='in-plane')``) keeps this: a flipped tile's valid output sizes share one residue
modulo the pooling factor, so every pass sees one global lattice too.

CLI (``python -m connectomix predict ACTION``, :mod:`connectomix.blockwise`): ``setup`` creates both arrays and records
the checkpoint, tile shape and augmentation in ``{work_dir}/setup.json``; ``block`` predicts blocks and writes one
marker per block (last, ``blocks/predict/{block}.json``); ``finish`` sets the digests, builds pyramids and writes a
summary JSON.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np

from connectomix.blocks import atomic_write_json
from connectomix.blockwise import Stage, Step, load_setup, new_setup, option, pyramid_options, read_markers, save_setup
from connectomix.blockwise import add_arguments as blockwise_arguments
from connectomix.config import defaults
from connectomix.io import build_pyramid, ensure_array, open_array, read_meta, read_padded, update_attrs
from connectomix.provenance import DIGEST_ATTR, array_digest, blocks_digest, data_digest, record, set_array_digest

SCALE = 1.0 / 255.0


# --- the predictor -------------------------------------------------------------------------------------------


def resolve_device(device: str = "auto", threads: int = 0):
    """'auto' -> CUDA when available, else CPU; CPU uses ``threads`` threads (0: all cores)."""
    import torch  # lazy: heavy, and the Snakefile imports this module

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))
    return dev


class Predictor:
    """Runs a model over regions of a volume with seamless tiling.

    ``tile_shape`` is the wanted output tile (voxels, z, y, x); it is enlarged to the nearest valid output shape.
    Tiles of equal shape are batched (``batch_size``). ``augment`` 'in-plane' averages the predictions of the
    in-plane flips and y/x transpositions of each tile (test-time augmentation: 8 passes, 4 when ``transpose`` is
    False, e.g. for unequal y and x voxel sizes); see :func:`augment_variants`. Weights channels-last (NDHWC:
    1.1-1.6x faster 3D convs on CPU, benchmarks/results/predict_throughput.md); on GPU bf16 autocast, on CPU fp32.
    On CPU the predictor works on its own copy of the model, so the caller's (e.g. a model in training) keeps its
    memory format.
    """

    def __init__(self, model, device="cpu", batch_size: int = 1, tile_shape: Sequence[int] = (24, 192, 192),
                 augment: str = "none", transpose: bool = True, value_range: Sequence[float] = (0.0, 255.0)):
        import copy

        import torch  # lazy: heavy, and the Snakefile imports this module

        self.arch = model.arch
        self.value_range = tuple(float(v) for v in value_range)
        self.variants = augment_variants(augment, transpose)
        if len(self.variants) > 1 and any(sum(v != 0 for v in o) > 1 for o in self.arch.offsets):
            raise ValueError(f"predict.augment {augment!r} needs affinity offsets along one axis each (a flip "
                             f"maps them onto themselves); this model has {[list(o) for o in self.arch.offsets]}")
        self.transposed = (transposed_channels(self.arch.offsets, self.arch.out_channels)
                           if any(v[2] for v in self.variants) else None)
        self.device = torch.device(device)
        if self.device.type == "cpu":
            model = copy.deepcopy(model)
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last_3d)
        self.batch_size = max(1, int(batch_size))
        self.tile_shape = tuple(int(t) for t in tile_shape)
        self.context = self.arch.context
        self.factor = self.arch.total_factor
        self.n_aff = len(self.arch.offsets)

    def _tiles(self, offset, shape):
        """Output tile shape and tile starts (aligned to the pooling lattice) covering the box."""
        want = [max(min(t, s), f) for t, s, f in zip(self.tile_shape, shape, self.factor)]
        tile = self.arch.valid_output_shape(want)
        step = [max(f, (t // f) * f) for t, f in zip(tile, self.factor)]
        first = [(o // f) * f for o, f in zip(offset, self.factor)]
        starts = []
        for axis in range(3):
            axis_starts = list(range(first[axis], offset[axis] + shape[axis], step[axis]))
            starts.append(axis_starts)
        grid = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
        return tile, first, grid

    def predict(self, source, offset: Sequence[int], shape: Sequence[int],
                volume_shape: Sequence[int] | None = None) -> np.ndarray:
        """Probabilities (float32, (channels, *shape)) for the box at ``offset`` of ``source`` (z, y, x uint8).

        Affinities whose neighbour lies outside the volume are set to 0 (the contract).
        """
        return self.predict_many(source, [(offset, shape)], volume_shape)[0]

    def predict_many(self, source, boxes, volume_shape: Sequence[int] | None = None) -> list[np.ndarray]:
        """:meth:`predict` for several boxes (e.g. blocks) at once: tiles of equal shape share batches."""
        import torch  # lazy: heavy, and the Snakefile imports this module

        from connectomix.models import normalize_raw  # imports torch

        volume_shape = tuple(volume_shape or source.shape)
        ctx = self.context
        # A flipped pass predicts each affinity edge at its other end: the boxes grow by the longest offset
        # in-plane so that the shift back (_unshift) finds every value it needs.
        reach = max((abs(int(v)) for o in self.arch.offsets for v in o[1:]), default=0)
        pad = (0, reach, reach) if len(self.variants) > 1 else (0, 0, 0)
        jobs = []  # per box: offset, shape, tile, out_start, raw (padded input), result buffers
        for offset, shape in boxes:
            offset = tuple(int(o) for o in offset)
            shape = tuple(int(s) for s in shape)
            tile, first, grid = self._tiles([o - p for o, p in zip(offset, pad)],
                                            [s + 2 * p for s, p in zip(shape, pad)])
            # One padded read covering every tile's input, then tiles are views into it.
            last = [max(g[a] for g in grid) for a in range(3)]
            in_start = [f - c for f, c in zip(first, ctx)]
            in_shape = [l + t + c - s for l, t, c, s in zip(last, tile, ctx, in_start)]
            raw = read_padded(source, in_start, in_shape, volume_shape)
            out_shape = [l + t - f for l, t, f in zip(last, tile, first)]
            jobs.append({"offset": offset, "shape": shape, "tile": tile, "first": first, "grid": grid,
                         "raw": raw, "out_shape": out_shape, "result": None, "pass": None})
        # (job, tile start) pairs grouped by tile shape, then batched.
        by_tile: dict = {}
        for j, job in enumerate(jobs):
            by_tile.setdefault(job["tile"], []).extend((j, g) for g in job["grid"])
        use_cuda = self.device.type == "cuda"
        for variant in self.variants:  # one pass over every tile per variant; tiles may overlap (equal values)
            for job in jobs:
                job["pass"] = np.zeros((self.arch.out_channels, *job["out_shape"]), dtype=np.float32)
            with torch.inference_mode():
                for tile, items in by_tile.items():
                    in_tile = [t + 2 * c for t, c in zip(tile, ctx)]
                    for b in range(0, len(items), self.batch_size):
                        batch = items[b:b + self.batch_size]
                        inputs = np.stack([
                            jobs[j]["raw"][tuple(slice(g[k] - jobs[j]["first"][k],
                                                       g[k] - jobs[j]["first"][k] + in_tile[k]) for k in range(3))]
                            for j, g in batch
                        ])[:, None]
                        x = normalize_raw(_augment(inputs, variant), self.value_range).to(self.device)
                        if use_cuda:
                            x = x.contiguous(memory_format=torch.channels_last_3d)
                            with torch.autocast("cuda", dtype=torch.bfloat16):
                                y = self.model(x)
                        else:
                            y = self.model(x)
                        y = _deaugment(torch.sigmoid(y.float()).cpu().numpy(), variant, self.transposed)
                        for (j, g), pred in zip(batch, y):
                            sl = tuple(slice(s - o, s - o + t) for s, o, t in zip(g, jobs[j]["first"], tile))
                            jobs[j]["pass"][(slice(None),) + sl] = pred
            for job in jobs:
                if any(variant[:2]):
                    job["pass"][:self.n_aff] = _unshift(job["pass"][:self.n_aff], self.arch.offsets, variant[:2])
                if job["result"] is None:
                    job["result"] = job["pass"]
                else:
                    job["result"] += job["pass"]
                job["pass"] = None
        outputs = []
        for job in jobs:
            result = job["result"]
            if len(self.variants) > 1:
                result /= len(self.variants)
            crop = tuple(slice(o - s, o - s + n) for o, s, n in zip(job["offset"], job["first"], job["shape"]))
            result = result[(slice(None),) + crop]
            zero_outside_affinities(result[:self.n_aff], self.arch.offsets, job["offset"], volume_shape)
            outputs.append(result)
        return outputs


AUGMENTATIONS = ("none", "in-plane")


def augment_variants(augment: str, transpose: bool = True) -> list[tuple[bool, bool, bool]]:
    """Test-time augmentation passes as (flip y, flip x, transpose y/x): 'none' (one pass) or 'in-plane' (the four
    in-plane flips, each also transposed when ``transpose``: the 8 symmetries of a square section)."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"predict.augment must be one of {AUGMENTATIONS}, got {augment!r}")
    if augment == "none":
        return [(False, False, False)]
    return [(fy, fx, t) for fy in (False, True) for fx in (False, True) for t in ((False, True) if transpose
                                                                              else (False,))]


def _augment(x: np.ndarray, variant) -> np.ndarray:
    """Flip (y, x) then transpose the last two axes of ``x`` (..., z, y, x)."""
    flip_y, flip_x, transpose = variant
    if flip_y:
        x = x[..., ::-1, :]
    if flip_x:
        x = x[..., ::-1]
    if transpose:
        x = np.swapaxes(x, -1, -2)
    return np.ascontiguousarray(x)


def _deaugment(y: np.ndarray, variant, transposed_channels) -> np.ndarray:
    """Undo :func:`_augment` on predictions (batch, channels, z, y, x); a transposed pass's channels are
    reordered by ``transposed_channels`` (each affinity channel takes its y/x mirror image's place). Flipped
    affinities stay at the edge's other end; :func:`_unshift` moves them."""
    flip_y, flip_x, transpose = variant
    if transpose:
        y = np.swapaxes(y, -1, -2)[:, transposed_channels]
    if flip_x:
        y = y[..., ::-1]
    if flip_y:
        y = y[..., ::-1, :]
    return y


def transposed_channels(offsets, out_channels: int) -> list[int]:
    """Channel order of a y/x-transposed pass: affinity offset (z, y, x) takes (z, x, y)'s channel; the other
    (voxel-wise) channels keep theirs. Offsets without their mirror image cannot be transposed (ValueError)."""
    offsets = [tuple(int(v) for v in o) for o in offsets]
    order = []
    for z, y, x in offsets:
        if (z, x, y) not in offsets:
            raise ValueError(f"affinity offsets {offsets} lack {[z, x, y]}, the y/x mirror of {[z, y, x]}: "
                             "predict.augment 'in-plane' cannot transpose this model's output")
        order.append(offsets.index((z, x, y)))
    return order + list(range(len(offsets), out_channels))


def _unshift(aff: np.ndarray, offsets, flips) -> np.ndarray:
    """Affinities of a pass flipped along y and/or x (``flips``), back in place: the flipped pass stores the edge
    (v, v + o) at v + o (offsets along one axis each), so channel o's value for v is read at v + o along each
    flipped axis. Values whose source lies outside the array are 0 (the caller's box has a margin of the longest
    offset)."""
    out = np.zeros_like(aff)
    for c, offset in enumerate(offsets):
        src, dst = [slice(None)] * 3, [slice(None)] * 3
        for axis, flip in zip((1, 2), flips):
            o = int(offset[axis]) if flip else 0
            n = aff.shape[1 + axis]
            dst[axis] = slice(max(0, -o), n - max(0, o))
            src[axis] = slice(max(0, o), n - max(0, -o))
        out[c][tuple(dst)] = aff[c][tuple(src)]
    return out


def zero_outside_affinities(aff: np.ndarray, offsets, offset: Sequence[int], volume_shape: Sequence[int]) -> None:
    """In place: affinity 0 where v + o lies outside the volume (``aff`` holds the box at global ``offset``)."""
    for c, o in enumerate(offsets):
        for axis, d in enumerate(o):
            if d == 0:
                continue
            coords = np.arange(offset[axis], offset[axis] + aff.shape[1 + axis]) + d
            bad = (coords < 0) | (coords >= volume_shape[axis])
            if bad.any():
                index = [slice(None)] * 3
                index[axis] = bad
                aff[c][tuple(index)] = 0


def zero_z_affinities(aff: np.ndarray, offsets, z0: int, sections) -> None:
    """In place: 0 for every affinity with a z component whose edge (v, v + o) touches one of ``sections`` (global
    z); ``aff`` (channels, z, y, x) starts at section ``z0``."""
    if not len(sections):
        return
    cut = np.asarray(sections)
    zs = np.arange(z0, z0 + aff.shape[1])
    for c, o in enumerate(offsets):
        if int(o[0]):
            aff[c][np.isin(zs, cut) | np.isin(zs + int(o[0]), cut)] = 0


def quantize(prob: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 (value * SCALE = probability)."""
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def grey_sample(array, max_sections: int = 16, max_pixels: int = 1 << 16) -> np.ndarray:
    """Grey values of a (z, y, x) array for volume statistics: up to ``max_sections`` evenly spaced sections (first
    and last included), each strided in y and x to at most about ``max_pixels`` pixels. Deterministic, so every
    job that asks gets the same sample; reads a few sections, never the whole volume."""
    from connectomix.ingest.normalize import sample_sections

    z, y, x = (int(n) for n in array.shape[-3:])
    step = max(1, int(np.ceil(np.sqrt(y * x / max_pixels))))
    return np.stack([np.asarray(array[s, ::step, ::step]) for s in sample_sections(0, z, max_sections)])


def volume_value_range(model, array) -> tuple[float, float]:
    """The grey values (lo, hi) that ``model`` (its checkpoint's input normalization) maps to -1 and 1 on
    ``array``."""
    from connectomix.models import input_normalization, input_range

    spec = getattr(model, "input_normalization", None) or input_normalization(None)
    return input_range(grey_sample(array) if spec["method"] != "fixed" else np.zeros(0), spec)


def predict_volume(model, raw: np.ndarray, device="cpu", batch_size: int = 1,
                   tile_shape: Sequence[int] = (24, 192, 192), augment: str = "none",
                   value_range: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Whole-volume prediction of an in-memory (z, y, x) uint8 volume: (affinities, synapse maps) float32.
    ``value_range``: the grey values mapped to -1 and 1 (default: from ``raw`` as the model's checkpoint says)."""
    if value_range is None:
        value_range = volume_value_range(model, raw)
    predictor = Predictor(model, device, batch_size, tile_shape, augment, value_range=value_range)
    prob = predictor.predict(raw, (0, 0, 0), raw.shape, raw.shape)
    n = len(model.arch.offsets)
    return prob[:n], prob[n:]


# --- blockwise over the OME-Zarr (connectomix.blockwise) -----------------------------------------------------

# What defines a block's result, recorded at setup: the checkpoint, the tile shape and the augmentation.
PARAMS = ("checkpoint", "tile_shape", "augment")


def resolve(params: dict | None) -> dict:
    """The predict parameters setup records: ``checkpoint`` (required), ``tile_shape`` and ``augment`` (defaults
    from the config schema's ``predict`` section)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(PARAMS))
    if unknown or "checkpoint" not in params:
        raise ValueError(f"predict parameters: give checkpoint (and optionally tile_shape, augment); "
                         f"{'unknown ' + str(unknown) if unknown else 'no checkpoint'}")
    section = defaults("predict")
    out = {key: params.get(key, section[key]) for key in PARAMS}
    out["checkpoint"] = str(out["checkpoint"])
    out["tile_shape"] = [int(t) for t in out["tile_shape"]]
    augment_variants(out["augment"])  # a clear error for an unknown augmentation
    return out


def setup(volume, work_dir, params, block_shape, chunk_shape=None, marker_dir=None, input="raw",
          missing_affinities="keep") -> dict:
    """Create the ``affinities`` and ``synapse_maps`` arrays and write ``{work_dir}/setup.json`` (the checkpoint,
    tile shape and augmentation, the grid with the network's context as halo).

    ``input``: the image array predicted from (``raw``, or ``aligned`` from connectomix.align); with
    ``missing_affinities`` 'zero', the z-affinities touching a section the input's attributes list as missing
    (``missing_sections``) are 0: no affinity across data never imaged.

    Arrays that exist with the same layout and a shape no larger than ``raw``'s are kept, resized in place when the
    dataset grew (``io.ensure_array``): the blocks already predicted keep their output, and the workflow reruns
    only the blocks whose read ROI changed. Anything else is created afresh."""
    from connectomix.models import load_checkpoint  # imports torch: lazy, as above

    params = resolve(params)
    model, ck = load_checkpoint(params["checkpoint"])  # refuse a bad model here, before any block job starts
    if missing_affinities not in ("zero", "keep"):
        raise ValueError(f"predict setup: missing_affinities must be 'zero' or 'keep', got {missing_affinities!r}")
    raw = read_meta(volume, input)
    shape = raw.spatial_shape
    chunk_shape = tuple(chunk_shape or raw.spatial_chunks)
    cut = sorted(int(z) for z in raw.attrs.get("missing_sections", [])) if missing_affinities == "zero" else []
    value_range = [round(v, 3) for v in volume_value_range(model, open_array(volume, input))]
    prov = record({**params, "weights_sha256": ck["weights_sha256"], "context": ck["context"],
                   "input_normalization": model.input_normalization, "input_range": value_range, "input": input,
                   "zero_z_affinities_at": cut},
                  {input: array_digest(volume, input), "checkpoint": ck["weights_sha256"]})
    s = new_setup("predict", volume, work_dir, shape=shape, block_shape=block_shape, chunk_shape=chunk_shape,
                  halo=ck["context"], voxel_size=raw.voxel_size, offset_nm=raw.offset_nm, params=params,
                  provenance=prov, marker_dir=marker_dir, weights_sha256=ck["weights_sha256"],
                  input_range=value_range, input=input, zero_z_affinities_at=cut)
    aff_channels = ck["channels"]["affinities"]
    syn_channels = ck["channels"]["synapse_maps"] or ["cleft", "pre", "post"]
    _, aff_status = ensure_array(
        volume, "affinities", (len(aff_channels), *shape), np.uint8, (len(aff_channels), *chunk_shape),
        raw.voxel_size, raw.offset_nm, channels=aff_channels,
        attrs={"offsets": ck["offsets"], "scale": SCALE, "context": ck["context"], "provenance": prov,
               DIGEST_ATTR: None})
    _, syn_status = ensure_array(
        volume, "synapse_maps", (len(syn_channels), *shape), np.uint8, (len(syn_channels), *chunk_shape),
        raw.voxel_size, raw.offset_nm, channels=syn_channels,
        attrs={"scale": SCALE, "predicted": bool(ck["channels"]["synapse_maps"]), "provenance": prov,
               DIGEST_ATTR: None})
    s["arrays"] = {"affinities": aff_status, "synapse_maps": syn_status}
    return save_setup(s)


def _prepare(s: dict, options: dict) -> dict:
    """Once per block job: the device, the checkpoint (the one setup recorded), the predictor and the arrays."""
    from connectomix.models import load_checkpoint  # imports torch: lazy, as above

    dev = resolve_device(options["device"], options["threads"])
    model, ck = load_checkpoint(s["params"]["checkpoint"], map_location=dev)
    if ck["weights_sha256"] != s["weights_sha256"]:
        raise ValueError(f"checkpoint {s['params']['checkpoint']} changed since predict setup (weights "
                         f"{ck['weights_sha256'][:12]}, setup recorded {s['weights_sha256'][:12]}): rerun setup")
    voxel_size = s["voxel_size"]
    return {"device": dev, "ck": ck,
            "predictor": Predictor(model, dev, options["batch_size"], s["params"]["tile_shape"],
                                   s["params"]["augment"], transpose=voxel_size[1] == voxel_size[2],
                                   value_range=s.get("input_range", (0.0, 255.0))),
            "raw": open_array(s["volume"], s.get("input", "raw")),
            "affinities": open_array(s["volume"], "affinities", mode="r+"),
            "synapse_maps": open_array(s["volume"], "synapse_maps", mode="r+")}


def _predict_blocks(s: dict, blocks, context: dict) -> list[dict]:
    """Predict blocks together (tiles batched across them); each writes exactly its write ROI. ``augment``: see
    :class:`Predictor`; y/x transpositions only when the volume's y and x voxel sizes are equal."""
    ck = context["ck"]
    n_aff = len(ck["offsets"])
    probs = context["predictor"].predict_many(context["raw"], [(b.write.offset, b.write.shape) for b in blocks],
                                              s["shape"])
    out = []
    for block, prob in zip(blocks, probs):
        q = quantize(prob)
        q[ck.get("untrained_affinities", [])] = 0  # channels training never taught (z, from 2D labels): no link
        zero_z_affinities(q[:n_aff], ck["offsets"], block.write.offset[0], s.get("zero_z_affinities_at", []))
        context["affinities"][(slice(None),) + block.write.slices] = q[:n_aff]
        digests = {"affinities": data_digest(q[:n_aff])}
        if ck["channels"]["synapse_maps"]:
            context["synapse_maps"][(slice(None),) + block.write.slices] = q[n_aff:]
            digests["synapse_maps"] = data_digest(q[n_aff:])
        out.append({"sha256": digests, "device": str(context["device"]), "voxels": block.write.size,
                    "mean_affinity": float(q[:n_aff].mean() * SCALE), "weights_sha256": ck["weights_sha256"],
                    "augment_passes": len(context["predictor"].variants)})
    return out


def finish(work_dir, summary=None, pyramid_levels=3, pyramid_factor=(1, 2, 2)) -> dict:
    """Check every block has its marker, set the arrays' digests, build both pyramids and write the summary."""
    s = load_setup(work_dir, "predict")
    records = read_markers(s, "predict")
    volume = s["volume"]
    written = sum(int(np.prod(r["write_shape"])) for r in records)
    out = {}
    for name in ("affinities", "synapse_maps"):
        arr = open_array(volume, name)
        set_array_digest(volume, name, blocks_digest(arr, records, name))
        out[name] = {"levels": build_pyramid(volume, name, pyramid_levels, pyramid_factor)}
        means = [float(np.asarray(arr[c]).mean() * SCALE) for c in range(arr.shape[0])]
        out[name]["channel_means"] = dict(zip(read_meta(volume, name).channels, means))
    seconds = sum(r.get("seconds", 0.0) for r in records)
    payload = {"blocks": len(records), "voxels": written, "seconds": round(seconds, 3),
               "voxels_per_second": written / max(seconds, 1e-9),
               "devices": sorted({r.get("device", "?") for r in records}), "arrays": out,
               "weights_sha256": sorted({r.get("weights_sha256") for r in records}),
               "checkpoint": s["params"]["checkpoint"]}
    update_attrs(volume, "affinities", predict_summary={k: payload[k] for k in ("blocks", "seconds", "voxels")})
    if summary:
        atomic_write_json(summary, payload)
    return payload


STAGE = Stage("predict", setup, (Step("predict", _predict_blocks, _prepare, batched=True),), finish,
              runtime=("threads", "device", "batch_size"), finish_options=pyramid_options(3),
              setup_options=(option("--input", default="raw", choices=("raw", "aligned"),
                                    help="the image array to predict from (default raw; aligned: connectomix.align)"),
                             option("--missing-affinities", default="keep", choices=("zero", "keep"),
                                    help="zero: z-affinities touching a section the input lists as missing are 0 "
                                         "(default keep)")))


# --- CLI -----------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``predict setup | block | finish`` (connectomix.blockwise)."""
    blockwise_arguments(parser, STAGE)


def run(args) -> int:
    return args.func(args)
