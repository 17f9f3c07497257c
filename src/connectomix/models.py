"""The anisotropic 3D U-Net (affinities + synapse maps) and its checkpoint format.

The network uses *valid* convolutions: every output voxel is a fixed function of the input inside its receptive
field, so tiles that start on the network's pooling lattice (multiples of the total downsampling factor) give
exactly the same values as one whole-volume pass. ``Architecture.context`` is the halo (voxels per side, z, y, x)
the blockwise inference adds to each block.

Output channels (logits): one per affinity offset (nearest neighbours first, then long-range), then the synapse
channels (``cleft``, ``pre``, ``post``).

A checkpoint is a folder with ``weights.pt`` (a plain tensor state dict, loaded with ``weights_only=True``) and
``checkpoint.json`` (architecture, context, training description, metrics, sha256 of ``weights.pt``).
:func:`load_checkpoint` verifies all of it before building the model and never unpickles code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from connectomix.blocks import atomic_write_json
from connectomix.provenance import version

NEAREST_OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
SYNAPSE_CHANNELS = ["cleft", "pre", "post"]
CHECKPOINT_FORMAT = 1
WEIGHTS_FILE = "weights.pt"
META_FILE = "checkpoint.json"
NORMS = ("none", "batch")  # per-tile statistics (instance/group norm) would break seamless tiling
UPSAMPLES = ("transposed", "nearest")


@dataclass
class Architecture:
    """Everything needed to rebuild the network (stored in ``checkpoint.json``)."""

    in_channels: int = 1
    num_fmaps: int = 8
    fmap_inc_factor: int = 2
    downsample_factors: list = field(default_factory=lambda: [[1, 2, 2], [1, 2, 2], [2, 2, 2]])
    kernel_sizes: list = field(default_factory=lambda: [[1, 3, 3], [1, 3, 3], [1, 3, 3], [3, 3, 3]])
    convs_per_level: int = 2
    norm: str = "none"
    upsample: str = "transposed"
    offsets: list = field(default_factory=lambda: [list(o) for o in NEAREST_OFFSETS])
    synapse_channels: list = field(default_factory=lambda: list(SYNAPSE_CHANNELS))

    @classmethod
    def from_dict(cls, spec: dict) -> "Architecture":
        """Build and validate from a dict; unknown keys or bad values raise ``ValueError``."""
        if not isinstance(spec, dict):
            raise ValueError(f"architecture must be a mapping, got {type(spec).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"unknown architecture keys {unknown}; expected some of {sorted(known)}")
        arch = cls(**spec)
        arch.validate()
        return arch

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        def ints(value, n, what):
            if (not isinstance(value, (list, tuple)) or len(value) != n
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
                raise ValueError(f"architecture {what} must be a list of {n} integers, got {value!r}")

        for name in ("in_channels", "num_fmaps", "fmap_inc_factor", "convs_per_level"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"architecture {name} must be a positive integer, got {value!r}")
        if not isinstance(self.downsample_factors, (list, tuple)):
            raise ValueError("architecture downsample_factors must be a list of [z, y, x] factors")
        for f in self.downsample_factors:
            ints(f, 3, "downsample factor")
            if min(f) < 1:
                raise ValueError(f"downsample factors must be >= 1, got {f}")
        if not isinstance(self.kernel_sizes, (list, tuple)) or len(self.kernel_sizes) != self.levels:
            raise ValueError(
                f"architecture kernel_sizes needs one [z, y, x] kernel per level ({self.levels}), "
                f"got {self.kernel_sizes!r}")
        for k in self.kernel_sizes:
            ints(k, 3, "kernel size")
            if min(k) < 1 or any(v % 2 == 0 for v in k):
                raise ValueError(f"kernel sizes must be odd and >= 1, got {k}")
        if self.norm not in NORMS:
            raise ValueError(f"architecture norm must be one of {NORMS} (seamless tiling), got {self.norm!r}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"architecture upsample must be one of {UPSAMPLES}, got {self.upsample!r}")
        if not isinstance(self.offsets, (list, tuple)) or len(self.offsets) < 3:
            raise ValueError("architecture offsets must list at least the 3 nearest-neighbour offsets")
        for o in self.offsets:
            ints(o, 3, "affinity offset")
        if [list(o) for o in self.offsets[:3]] != NEAREST_OFFSETS:
            raise ValueError(f"the first three affinity offsets must be {NEAREST_OFFSETS}, got {self.offsets[:3]}")
        if list(self.synapse_channels) not in ([], SYNAPSE_CHANNELS):
            raise ValueError(f"synapse_channels must be [] or {SYNAPSE_CHANNELS}, got {self.synapse_channels!r}")
        self.context  # raises if no input size is valid

    @property
    def levels(self) -> int:
        return len(self.downsample_factors) + 1

    @property
    def out_channels(self) -> int:
        return len(self.offsets) + len(self.synapse_channels)

    @property
    def affinity_channels(self) -> list[str]:
        return [offset_name(o) for o in self.offsets]

    @property
    def total_factor(self) -> tuple[int, int, int]:
        """Product of the downsampling factors: tiles must start on multiples of this (z, y, x)."""
        return tuple(math.prod(f[a] for f in self.downsample_factors) for a in range(3))  # type: ignore

    # --- shape arithmetic (pure Python, per axis) ---------------------------------------------------------

    def _out_size(self, size: int, axis: int) -> int | None:
        """Output size for an input size along one axis, or None when the size is not valid."""
        shrink = [self.convs_per_level * (k[axis] - 1) for k in self.kernel_sizes]
        skips = []
        s = size
        for level, f in enumerate(self.downsample_factors):
            s -= shrink[level]
            if s <= 0 or s % f[axis]:
                return None
            skips.append(s)
            s //= f[axis]
        s -= shrink[-1]
        if s <= 0:
            return None
        for level in reversed(range(len(self.downsample_factors))):
            s *= self.downsample_factors[level][axis]
            diff = skips[level] - s
            if diff < 0 or diff % 2:
                return None
            s -= shrink[level]
            if s <= 0:
                return None
        return s

    def _valid_sizes(self, axis: int, limit: int = 4096) -> list[tuple[int, int]]:
        return [(n, out) for n in range(1, limit) if (out := self._out_size(n, axis)) is not None]

    @property
    def context(self) -> tuple[int, int, int]:
        """Voxels of input needed on each side of an output (z, y, x): the blockwise halo."""
        ctx = []
        for axis in range(3):
            sizes = self._valid_sizes(axis, limit=2048)
            if not sizes:
                raise ValueError(f"architecture has no valid input size along axis {'zyx'[axis]}")
            n, out = sizes[0]
            if (n - out) % 2:
                raise ValueError(f"architecture shrinks by an odd amount along axis {'zyx'[axis]}")
            ctx.append((n - out) // 2)
        return tuple(ctx)  # type: ignore[return-value]

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
        """Output shape for an input shape; ``ValueError`` when the input shape is not valid."""
        out = tuple(self._out_size(int(s), a) for a, s in enumerate(input_shape))
        if any(o is None for o in out):
            raise ValueError(f"input shape {tuple(input_shape)} is not valid for this network")
        return out  # type: ignore[return-value]

    def valid_output_shape(self, at_least: Sequence[int]) -> tuple[int, int, int]:
        """The smallest valid output shape that is >= ``at_least`` along every axis."""
        out = []
        for axis, want in enumerate(at_least):
            sizes = self._valid_sizes(axis, limit=max(4096, 4 * int(want) + 512))
            choice = next((o for _, o in sizes if o >= int(want)), None)
            if choice is None:
                raise ValueError(f"no valid output size >= {want} along axis {'zyx'[axis]}")
            out.append(choice)
        return tuple(out)  # type: ignore[return-value]

    def input_shape(self, output_shape: Sequence[int]) -> tuple[int, int, int]:
        """Input shape producing ``output_shape`` (which must be a valid output shape)."""
        ctx = self.context
        shape = tuple(int(o) + 2 * c for o, c in zip(output_shape, ctx))
        if self.output_shape(shape) != tuple(int(o) for o in output_shape):
            raise ValueError(f"{tuple(output_shape)} is not a valid output shape of this network")
        return shape  # type: ignore[return-value]

    def conv_flops_per_voxel(self, output_shape: Sequence[int] = (16, 128, 128)) -> tuple[float, int]:
        """Analytic multiply-add FLOPs (2 per MAC) of all convolutions for one tile; returns (flops, out voxels)."""
        out_shape = self.valid_output_shape(output_shape)
        in_shape = self.input_shape(out_shape)
        flops = 0.0
        fm = [self.num_fmaps * self.fmap_inc_factor**level for level in range(self.levels)]
        s = list(in_shape)
        cin = self.in_channels
        skips = []
        for level in range(self.levels):
            for _ in range(self.convs_per_level):
                k = self.kernel_sizes[level]
                s = [a - (b - 1) for a, b in zip(s, k)]
                flops += 2 * math.prod(s) * cin * fm[level] * math.prod(k)
                cin = fm[level]
            if level < self.levels - 1:
                skips.append(list(s))
                s = [a // f for a, f in zip(s, self.downsample_factors[level])]
        for level in reversed(range(self.levels - 1)):
            f = self.downsample_factors[level]
            s = [a * b for a, b in zip(s, f)]
            flops += 2 * math.prod(s) * cin * fm[level]  # transposed (k = stride) or 1x1x1: one tap per voxel
            cin = 2 * fm[level]
            for _ in range(self.convs_per_level):
                k = self.kernel_sizes[level]
                s = [a - (b - 1) for a, b in zip(s, k)]
                flops += 2 * math.prod(s) * cin * fm[level] * math.prod(k)
                cin = fm[level]
        flops += 2 * math.prod(s) * cin * self.out_channels
        return flops, math.prod(out_shape)


def architecture_from_params(model: dict):
    """The :class:`~connectomix.models.Architecture` described by the `train.model` config section."""
    return Architecture.from_dict({
        "num_fmaps": model["num_fmaps"],
        "fmap_inc_factor": model["fmap_inc_factor"],
        "downsample_factors": [list(f) for f in model["downsample_factors"]],
        "kernel_sizes": [list(k) for k in model["kernel_sizes"]],
        "convs_per_level": model["convs_per_level"],
        "norm": model["norm"],
        "upsample": model["upsample"],
        "offsets": [list(o) for o in NEAREST_OFFSETS] + [list(o) for o in model["long_range_offsets"]],
        "synapse_channels": list(SYNAPSE_CHANNELS) if model["synapses"] else [],
    })


def offset_name(offset: Sequence[int]) -> str:
    """Channel name of an affinity offset: 'z', 'y', 'x' for nearest neighbours, else 'aff_dz_dy_dx'."""
    offset = [int(v) for v in offset]
    if offset in NEAREST_OFFSETS:
        return "zyx"[NEAREST_OFFSETS.index(offset)]
    return "aff_" + "_".join(str(v) for v in offset)


# --- the network ------------------------------------------------------------------------------------------


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: Sequence[int], n: int, norm: str):
        layers: list[nn.Module] = []
        for i in range(n):
            layers.append(nn.Conv3d(cin if i == 0 else cout, cout, tuple(kernel), padding=0))
            if norm == "batch":
                layers.append(nn.BatchNorm3d(cout))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def _center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    starts = [(a - b) // 2 for a, b in zip(x.shape[-3:], shape)]
    return x[..., starts[0]:starts[0] + shape[0], starts[1]:starts[1] + shape[1], starts[2]:starts[2] + shape[2]]


class UNet(nn.Module):
    """Anisotropic valid-convolution 3D U-Net with a multi-task 1x1x1 head (logits)."""

    def __init__(self, arch: Architecture):
        super().__init__()
        arch.validate()
        self.arch = arch
        fm = [arch.num_fmaps * arch.fmap_inc_factor**level for level in range(arch.levels)]
        self.down = nn.ModuleList()
        cin = arch.in_channels
        for level in range(arch.levels):
            self.down.append(_ConvBlock(cin, fm[level], arch.kernel_sizes[level], arch.convs_per_level, arch.norm))
            cin = fm[level]
        self.pool = nn.ModuleList(
            nn.MaxPool3d(tuple(f), stride=tuple(f)) for f in arch.downsample_factors
        )
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in range(arch.levels - 1):
            f = tuple(arch.downsample_factors[level])
            if arch.upsample == "transposed":
                self.upsample.append(nn.ConvTranspose3d(fm[level + 1], fm[level], f, stride=f))
            else:
                self.upsample.append(nn.Sequential(nn.Upsample(scale_factor=f, mode="nearest"),
                                                   nn.Conv3d(fm[level + 1], fm[level], 1)))
            self.up.append(_ConvBlock(2 * fm[level], fm[level], arch.kernel_sizes[level], arch.convs_per_level,
                                      arch.norm))
        self.head = nn.Conv3d(fm[0], arch.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in range(self.arch.levels - 1):
            x = self.down[level](x)
            skips.append(x)
            x = self.pool[level](x)
        x = self.down[-1](x)
        for level in reversed(range(self.arch.levels - 1)):
            x = self.upsample[level](x)
            x = torch.cat([_center_crop(skips[level], x.shape[-3:]), x], dim=1)
            x = self.up[level](x)
        return self.head(x)


FIXED_RANGE = (0.0, 255.0)


def input_normalization(meta: dict | None) -> dict:
    """A checkpoint's input normalization: ``{"method": "fixed"}`` (grey 0 -> -1, 255 -> 1; checkpoints that do
    not say) or ``{"method": "percentile", "percentiles": [lo, hi]}`` (each volume's ``lo`` and ``hi`` grey-value
    percentiles -> -1 and 1, so every volume reaches the network with the same grey-value spread)."""
    spec = dict((meta or {}).get("input_normalization") or {"method": "fixed"})
    if spec.get("method") not in ("fixed", "percentile"):
        raise ValueError(f"input_normalization method must be 'fixed' or 'percentile', got {spec.get('method')!r}")
    if spec["method"] == "fixed":
        return {"method": "fixed"}
    if spec["method"] == "percentile":
        lo, hi = (float(p) for p in spec.get("percentiles", (1.0, 99.0)))
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"input_normalization percentiles must be 0 <= lo < hi <= 100, got {[lo, hi]}")
        spec["percentiles"] = [lo, hi]
    return spec


def input_range(sample: np.ndarray, normalization: dict) -> tuple[float, float]:
    """The grey values that map to -1 and 1 for a volume whose grey values ``sample`` holds (any shape), under
    ``normalization`` (:func:`input_normalization`). A flat sample (no spread) gets the fixed range."""
    if normalization["method"] == "fixed":
        return FIXED_RANGE
    lo, hi = (float(v) for v in np.percentile(np.asarray(sample), normalization["percentiles"]))
    if not hi - lo >= 1.0:
        return FIXED_RANGE
    return lo, hi


def normalize_raw(raw, value_range=FIXED_RANGE) -> torch.Tensor:
    """uint8 grey values -> float32, ``value_range`` (lo, hi) -> (-1, 1), clipped to [-1, 1]; one map per volume
    (no per-tile statistics), so tiling stays seamless."""
    lo, hi = (float(v) for v in value_range)
    t = torch.as_tensor(raw).float().sub_(lo).mul_(2.0 / (hi - lo)).sub_(1.0)
    return t.clamp_(-1.0, 1.0) if (lo, hi) != FIXED_RANGE else t


# --- checkpoints -------------------------------------------------------------------------------------------

REQUIRED_META = ("format", "architecture", "context", "channels", "weights_sha256", "connectomix_version",
                 "iterations", "training", "validation")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(out_dir: str | os.PathLike, model: UNet, meta: dict) -> dict:
    """Write ``weights.pt`` (state dict, tensors only) and ``checkpoint.json`` (atomically, written last).

    ``meta`` carries training description, iterations and metrics; architecture, context, channels, version and
    the weights' sha256 are added here. Returns the JSON payload.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / WEIGHTS_FILE)
    arch = model.arch
    payload = {
        "iterations": 0, "training": {}, "validation": {},
        **meta,
        "format": CHECKPOINT_FORMAT,
        "architecture": arch.to_dict(),
        "context": list(arch.context),
        "total_factor": list(arch.total_factor),
        "channels": {"affinities": arch.affinity_channels, "synapse_maps": list(arch.synapse_channels)},
        "offsets": [list(o) for o in arch.offsets],
        "connectomix_version": version(),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(out / WEIGHTS_FILE),
        "weights_bytes": (out / WEIGHTS_FILE).stat().st_size,
        "input_normalization": input_normalization({"input_normalization": getattr(model, "input_normalization",
                                                                                   None)}),
    }
    atomic_write_json(out / META_FILE, payload)
    return payload


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """Read and check ``checkpoint.json`` (a folder or the JSON file itself); ``ValueError`` if malformed."""
    path = Path(path)
    meta_path = path / META_FILE if path.is_dir() else path
    if not meta_path.exists() or meta_path.suffix != ".json":
        hint = f"; {path.name} is a weights file, not a checkpoint" if path.is_file() else ""
        raise FileNotFoundError(f"no checkpoint at {path}{hint}: a checkpoint is a folder holding {META_FILE} "
                                f"(architecture, training record, sha256) and {WEIGHTS_FILE} (connectomix.models)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"checkpoint {meta_path}: not valid JSON ({error})") from error
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint {meta_path}: expected a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint {meta_path}: missing keys {missing}")
    if meta["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {meta_path}: format {meta['format']!r}, this version reads {CHECKPOINT_FORMAT}")
    arch = Architecture.from_dict(meta["architecture"])
    if list(meta["context"]) != list(arch.context):
        raise ValueError(f"checkpoint {meta_path}: recorded context {meta['context']} does not match the "
                         f"architecture's {list(arch.context)}")
    return meta


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> tuple[UNet, dict]:
    """Verify and load a checkpoint folder; returns (model in eval mode, metadata).

    Checks, in order: JSON well-formed with all keys, architecture valid, sha256 of ``weights.pt`` matches,
    the file unpickles with ``weights_only=True`` (no code can run) to a dict of tensors whose keys and shapes
    match the architecture. Any failure raises ``ValueError`` naming the problem.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta = read_checkpoint_meta(path)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"checkpoint {folder}: {WEIGHTS_FILE} is missing")
    actual = sha256_file(weights)
    if actual != meta["weights_sha256"]:
        raise ValueError(f"checkpoint {folder}: sha256 of {WEIGHTS_FILE} is {actual}, checkpoint.json says "
                         f"{meta['weights_sha256']} (file modified or corrupt)")
    try:
        state = torch.load(weights, weights_only=True, map_location=map_location)
    except Exception as error:  # UnpicklingError, RuntimeError, ...: never fall back to an unsafe load
        text = str(error).strip()
        # PyTorch's own text goes on to explain how to load the file unsafely: never repeat that
        detail = ("it holds Python objects besides tensors" if "weights only load failed" in text.lower()
                  else f"{type(error).__name__}: {text.splitlines()[0][:160] if text else ''}")
        raise ValueError(f"checkpoint {folder}: {WEIGHTS_FILE} is not a plain tensor state dict ({detail}), so it "
                         f"was refused: loading anything else can run code from the file, which connectomix never "
                         f"does. Save the weights with torch.save(model.state_dict(), path)") from error
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"checkpoint {folder}: {WEIGHTS_FILE} must hold a dict of name -> tensor")
    model = UNet(Architecture.from_dict(meta["architecture"]))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"checkpoint {folder}: state dict does not match the architecture "
                         f"(missing {missing[:5]}, unexpected {extra[:5]})")
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise ValueError(f"checkpoint {folder}: tensor shapes do not match the architecture: {wrong[:5]}")
    model.load_state_dict(state, strict=True)
    model.eval()
    model.input_normalization = input_normalization(meta)
    return model, meta
