"""Write a phantom: arrays into the dataset's OME-Zarr, ground-truth tables and a montage under ``gt/``.

Tables go through a temp name + rename; ``gt/phantom.json`` is written last, so its presence means complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from connectomix import io
from connectomix.blocks import atomic_write_json
from connectomix.coregister.functional import write_nwb
from connectomix.provenance import DIGEST_ATTR, data_digest, record


def _atomic(path: Path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_phantom(ph, out_dir, volume_root, chunk_shape, offset_nm, pyramid_levels, pyramid_factor):
    """Arrays into ``volume_root`` (with pyramids), tables/affine/montage into ``out_dir/gt``, phantom.json last."""
    out_dir = Path(out_dir)
    gt = out_dir / "gt"
    (gt / "phantom.json").unlink(missing_ok=True)  # the completion marker goes first and comes back last
    chunks = tuple(int(c) for c in chunk_shape)
    voxel = ph.voxel_size
    prov = record(ph.params.to_dict())
    arrays = [("raw", ph.raw, False), ("gt/labels", ph.labels, True), ("gt/clefts", ph.clefts, True),
              ("gt/mito", ph.mito, True)]
    if ph.misalignment is not None:  # the defect mask, in the observed (misaligned) frame of raw
        arrays.append(("gt/defects", ph.misalignment["defects"], True))
    for name, data, is_label in arrays:
        io.write_full(volume_root, name, data, chunks, voxel, offset_nm, is_label=is_label,
                      attrs={"provenance": prov, DIGEST_ATTR: data_digest(data)})
        io.build_pyramid(volume_root, name, pyramid_levels, pyramid_factor)

    neurons, synapses, affine = _shift_to_offset(ph, offset_nm)
    tables = {"neurons": neurons, "objects": ph.objects, "synapses": synapses, "edges": ph.edges,
              "functional/rois": ph.rois, "functional/stimuli": ph.stimuli}
    if ph.misalignment is not None:  # the true section transforms (connectomix.phantom.defects.truth_tables)
        tables["align/sections"] = ph.misalignment["sections"]
        tables["align/points"] = _shift_points(ph.misalignment["points"], offset_nm)
    for name, frame in tables.items():
        _atomic(gt / f"{name}.parquet", lambda tmp, f=frame: f.to_parquet(tmp, index=False, engine="pyarrow"))
    _atomic(gt / "functional" / "responses.npy", lambda tmp: _save_npy(tmp, ph.responses))
    write_nwb(gt / "functional" / "functional.nwb", ph.rois, ph.responses, ph.stimuli,  # the same, as NWB
              description="connectomix phantom: two-photon ROIs and oriented-grating responses")
    atomic_write_json(gt / "functional" / "affine.json", {
        "matrix": affine.tolist(),
        "description": "EM (x, y, z, 1) in nm -> two-photon imaging (x, y, z) in micrometres",
    })
    _atomic(gt / "montage.png", lambda tmp: montage(ph, tmp))
    atomic_write_json(gt / "phantom.json", {
        "params": ph.params.to_dict(),
        "voxel_size": list(voxel),
        "offset_nm": list(offset_nm),
        "shape": list(ph.raw.shape),
        "stats": {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in ph.stats.items()},
        "provenance": prov,
    })


def _save_npy(path, array):
    with open(path, "wb") as f:
        np.save(f, array)


def _shift_points(points, offset_nm):
    """The ground-truth point table in the dataset frame (y, x positions shifted by the offset)."""
    points = points.copy()
    for axis, name in ((1, "y"), (2, "x")):
        for col in (f"raw_{name}_nm", f"aligned_{name}_nm"):
            points[col] = points[col] + float(offset_nm[axis])
    return points


def _shift_to_offset(ph, offset_nm):
    """Tables and affine in the dataset's EM frame, where voxel (0, 0, 0) sits at ``offset_nm`` (z, y, x).

    The phantom is generated with voxel (0, 0, 0) at the origin; the imaging positions stay where they are.
    """
    off = np.asarray(offset_nm, dtype=np.float64)
    neurons, synapses = ph.neurons.copy(), ph.synapses.copy()
    for frame in (neurons, synapses):
        for col in frame.columns:
            for axis, name in enumerate("zyx"):
                if col.endswith(f"_{name}_nm") and col != "soma_radius_nm":
                    frame[col] = frame[col] + off[axis]
    shift = np.eye(4)
    shift[:3, 3] = -off[::-1]  # (x, y, z) of the dataset frame back to the generation frame
    return neurons, synapses, ph.affine @ shift


def montage(ph, path, n_sections: int = 4) -> None:
    """Sections of the raw image with ground-truth outlines (labels, clefts in red) beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    zs = np.linspace(0, ph.raw.shape[0] - 1, n_sections + 2).round().astype(int)[1:-1]
    fig, axes = plt.subplots(2, n_sections, figsize=(4 * n_sections, 8))
    for col, z in enumerate(zs):
        axes[0, col].imshow(ph.raw[z], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[0, col].set_title(f"raw, section z={z}")
        overlay = np.stack([ph.raw[z] / 255.0] * 3, axis=-1)
        overlay[find_boundaries(ph.labels[z], mode="inner")] = (0.1, 0.9, 1.0)
        overlay[ph.clefts[z] > 0] = (1.0, 0.1, 0.1)
        axes[1, col].imshow(overlay, interpolation="nearest")
        axes[1, col].set_title("ground-truth labels (cyan), clefts (red)")
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    vz, vy, vx = ph.voxel_size
    fig.suptitle(f"connectomix phantom (seed {ph.params.seed}), {ph.raw.shape} voxels of {vz:g} x {vy:g} x {vx:g} nm, "
                 f"{ph.stats.get('n_neurons')} neurons, {ph.stats.get('n_synapses')} synapses")
    fig.tight_layout()
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)


__all__ = ["write_phantom", "montage"]
