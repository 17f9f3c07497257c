"""The align stage over the OME-Zarr (connectomix.blockwise): ``setup`` estimates every section's transform at once
(connectomix.align.core.estimate, reading one section at a time), writes the tables and allocates ``aligned`` and
``defects``; ``block`` renders blocks from the global transforms (seamless: a block equals the whole-volume render
at its voxels); ``finish`` sets digests, builds the pyramids and writes the summary.

Tables in the work folder (``results/{dataset}/align``), positions and displacements in nm, relative to voxel
(0, 0, 0) (the array's offset_nm is not added):

* ``sections.parquet``: z, status (ok, low_contrast, blank, missing), mean, std, structure (grey values),
  translation_y_nm / translation_x_nm (coarse), gain and bias (the grey-value map of the render), matches (kept
  local matches touching the section), match_residual_nm (their rms residual);
* ``transforms.parquet``: z, node_y, node_x (mesh indices), y_nm, x_nm (node position), dy_nm, dx_nm: the aligned
  voxel at (y, x) shows raw at (y + dy, x + dx), bilinear between nodes;
* ``matches.parquet``: every local match (z, z2, y, x, dy, dx px, ncc, residual_px, kept).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from connectomix.align import core
from connectomix.blocks import atomic_write_json
from connectomix.blockwise import Stage, Step, load_setup, new_setup, pyramid_options, read_markers, save_setup
from connectomix.config import defaults
from connectomix.io import build_pyramid, ensure_array, open_array, read_meta, update_attrs
from connectomix.provenance import (DIGEST_ATTR, array_digest, blocks_digest, data_digest, file_checksum, record,
                                    set_array_digest)

PARAMS = ("mesh_spacing_px", "patch_px", "neighbours", "min_correlation", "smoothness", "elastic_weight",
          "affine_weight", "identity_weight", "blank_ratio", "low_contrast_ratio", "equalize_contrast")


def resolve(params: dict | None) -> dict:
    """The align parameters (the config's ``align`` section without ``enabled`` / ``missing_affinities``), over
    the schema's defaults; an unknown key is an error."""
    params = {k: v for k, v in dict(params or {}).items() if k not in ("enabled", "missing_affinities")}
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ValueError(f"align parameters: unknown {unknown} (known: {', '.join(PARAMS)})")
    section = defaults("align")
    return {key: params.get(key, section[key]) for key in PARAMS}


def load_transforms(work_dir) -> dict:
    """The mesh (z, 2, ny, nx) px, status, gain and bias per section from the work folder's tables."""
    from pathlib import Path

    s = load_setup(work_dir, "align")
    sections = pd.read_parquet(Path(work_dir) / "sections.parquet")
    nodes = pd.read_parquet(Path(work_dir) / "transforms.parquet")
    nz, ny, nx = len(sections), int(nodes.node_y.max()) + 1, int(nodes.node_x.max()) + 1
    nodes = nodes.sort_values(["z", "node_y", "node_x"])
    vy, vx = s["voxel_size"][1], s["voxel_size"][2]
    mesh = np.stack([nodes.dy_nm.to_numpy() / vy, nodes.dx_nm.to_numpy() / vx]).reshape(2, nz, ny, nx)
    return {"mesh": mesh.transpose(1, 0, 2, 3).copy(), "status": sections.status.to_numpy(),
            "gain": sections.gain.to_numpy(), "bias": sections.bias.to_numpy()}


def write_tables(work_dir, est: dict, voxel_size, equalize: bool) -> dict:
    """Write sections, transforms and matches tables (module docstring); returns their file digests."""
    from pathlib import Path

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    vy, vx = float(voxel_size[1]), float(voxel_size[2])
    stats = est["stats"].copy()
    gain, bias = core.intensity(stats, est["status"], equalize)
    m = est["matches"]
    kept = m[m.kept] if len(m) else m
    per = [kept[(kept.z == z) | (kept.z2 == z)] for z in range(len(stats))]
    stats = stats.assign(translation_y_nm=est["translation"][:, 0] * vy, translation_x_nm=est["translation"][:, 1] * vx,
                         gain=gain, bias=bias, matches=[len(p) for p in per],
                         match_residual_nm=[float(np.sqrt((p.residual_px ** 2).mean())) * vy if len(p) else np.nan
                                            for p in per])
    mesh = est["mesh"]
    nz, _, ny, nx = mesh.shape
    z, iy, ix = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    nodes = pd.DataFrame({"z": z.ravel().astype(np.int32), "node_y": iy.ravel().astype(np.int32),
                          "node_x": ix.ravel().astype(np.int32), "y_nm": est["nodes_y"][iy.ravel()] * vy,
                          "x_nm": est["nodes_x"][ix.ravel()] * vx, "dy_nm": mesh[:, 0].ravel() * vy,
                          "dx_nm": mesh[:, 1].ravel() * vx})
    out = {}
    for name, frame in (("sections", stats), ("transforms", nodes), ("matches", m)):
        path = work / f"{name}.parquet"
        tmp = work / f".{name}.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        out[name] = file_checksum(path)
    return out


def setup(volume, work_dir, params, block_shape, chunk_shape=None, marker_dir=None) -> dict:
    """Estimate the transforms of every section of ``raw`` (one section in memory at a time, a few for the
    matches), write the tables, create ``aligned`` (uint8) and ``defects`` (uint8 bit flags: 1 no raw data, i.e.
    mirrored from inside the section; 2 missing or blank section, filled from its neighbours; 4 low contrast)."""
    params = resolve(params)
    raw_meta = read_meta(volume, "raw")
    raw = open_array(volume, "raw")
    shape = raw_meta.spatial_shape
    est = core.estimate(lambda z: np.asarray(raw[z]), shape[0], params, shape=shape[1:])
    digests = write_tables(work_dir, est, raw_meta.voxel_size, params["equalize_contrast"])
    status = est["status"]
    missing = [int(z) for z in np.flatnonzero(~np.isin(status, core.USABLE))]
    prov = record(params, {"raw": array_digest(volume, "raw"), **{f"{k}.parquet": v for k, v in digests.items()}})
    chunk_shape = tuple(chunk_shape or raw_meta.spatial_chunks)
    s = new_setup("align", volume, work_dir, shape=shape, block_shape=block_shape, chunk_shape=chunk_shape,
                  halo=(0, 0, 0), voxel_size=raw_meta.voxel_size, offset_nm=raw_meta.offset_nm, params=params,
                  provenance=prov, marker_dir=marker_dir, tables=digests, missing_sections=missing)
    attrs = {"provenance": prov, "missing_sections": missing, DIGEST_ATTR: None,
             "low_contrast_sections": [int(z) for z in np.flatnonzero(status == "low_contrast")]}
    _, aligned = ensure_array(volume, "aligned", shape, np.uint8, chunk_shape, raw_meta.voxel_size,
                              raw_meta.offset_nm, attrs=attrs)
    _, flags = ensure_array(volume, "defects", shape, np.uint8, chunk_shape, raw_meta.voxel_size,
                            raw_meta.offset_nm, is_label=True, attrs=attrs)
    s["arrays"] = {"aligned": aligned, "defects": flags}
    return save_setup(s)


def _prepare(s: dict, options: dict) -> dict:
    from pathlib import Path

    for name, digest in s["tables"].items():
        if file_checksum(Path(s["work_dir"]) / f"{name}.parquet") != digest:
            raise ValueError(f"{s['work_dir']}/{name}.parquet changed since align setup: rerun setup")
    return {"transforms": load_transforms(s["work_dir"]), "raw": open_array(s["volume"], "raw"),
            "aligned": open_array(s["volume"], "aligned", mode="r+"),
            "defects": open_array(s["volume"], "defects", mode="r+")}


def _render_block(s: dict, block, context: dict) -> dict:
    """Render one block's write ROI from the global transforms."""
    (z0, z1), (y0, y1), (x0, x1) = ((o, o + n) for o, n in zip(block.write.offset, block.write.shape))
    image, flags = core.render(context["raw"], context["transforms"], z0, z1, y0, y1, x0, x1)
    context["aligned"][block.write.slices] = image
    context["defects"][block.write.slices] = flags
    return {"sha256": {"aligned": data_digest(image), "defects": data_digest(flags)}, "voxels": block.write.size,
            "defect_voxels": int(np.count_nonzero(flags))}


def finish(work_dir, summary=None, pyramid_levels=3, pyramid_factor=(1, 2, 2)) -> dict:
    """Check every block's marker, set the digests, build the pyramids, write the summary."""
    from pathlib import Path

    s = load_setup(work_dir, "align")
    records = read_markers(s, "align")
    volume = s["volume"]
    levels = {}
    for name in ("aligned", "defects"):
        arr = open_array(volume, name)
        set_array_digest(volume, name, blocks_digest(arr, records, name))
        levels[name] = build_pyramid(volume, name, pyramid_levels, pyramid_factor)
    sections = pd.read_parquet(Path(work_dir) / "sections.parquet")
    matches = pd.read_parquet(Path(work_dir) / "matches.parquet")
    seconds = sum(r.get("seconds", 0.0) for r in records)
    voxels = sum(int(np.prod(r["write_shape"])) for r in records)
    kept = matches[matches.kept] if len(matches) else matches
    payload = {"blocks": len(records), "voxels": voxels, "render_seconds": round(seconds, 3),
               "voxels_per_second": voxels / max(seconds, 1e-9),
               "sections": {k: [int(z) for z in sections.z[sections.status == k]]
                            for k in ("missing", "blank", "low_contrast")},
               "matches": int(len(matches)), "matches_kept": int(len(kept)),
               "match_residual_median_nm": float(np.median(kept.residual_px) * s["voxel_size"][1]) if len(kept)
               else None, "levels": levels, "params": s["params"], "provenance": s["provenance"]}
    update_attrs(volume, "aligned", align_summary={k: payload[k] for k in ("blocks", "voxels", "sections")})
    if summary:
        atomic_write_json(summary, payload)
    return payload


STAGE = Stage("align", setup, (Step("align", _render_block, _prepare),), finish,
              finish_options=pyramid_options(3))
