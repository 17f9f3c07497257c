"""The synapses stage on :mod:`connectomix.blockwise`: ``setup`` (the empty ``cleft_fragments`` array), the
``synapses`` block step (clefts of one block) and ``finish`` (face merge, ``clefts``, partners, the tables);
:func:`detect_synapses` runs them all in one process."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from connectomix import io, provenance
from connectomix.blocks import atomic_write_json, atomic_write_parquet
from connectomix.blockwise import Stage, Step, grid_of, load_setup, new_setup, option, read_markers, run_step
from connectomix.blockwise import save_setup
from connectomix.synapses.clefts import face_pairs, label_block, merge_pieces, probability, remap, threshold_cleft
from connectomix.synapses.params import cleft_halo, partner_halo, resolve
from connectomix.synapses.partner_model import assign, model_digest
from connectomix.synapses.partners import combine_interfaces, combine_pairs, partner_stats_block
from connectomix.synapses.partners import synapse_table

SYNAPSE_MAPS = "synapse_maps"
FRAGMENTS = "cleft_fragments"
CLEFTS = "clefts"


def _inner_faces(grid, block):
    return tuple((block.index[a] > 0, block.index[a] + 1 < grid.grid_shape[a]) for a in range(3))


def _channel(meta, name: str) -> int:
    channels = list(meta.channels or ())
    if name not in channels:
        raise ValueError(f"{meta.name} has channels {channels}, expected a '{name}' channel")
    return channels.index(name)


def setup(volume, work_dir, params: dict | None, block_shape, chunk_shape=None, marker_dir=None,
          maps: str = SYNAPSE_MAPS, segmentation: str = "segmentation", raw: str | None = "raw") -> dict:
    """Create the empty ``cleft_fragments`` array and write ``{work_dir}/setup.json`` (resolved parameters, grid
    with the cleft halo, the map, segmentation and image arrays; ``raw``: the image the maps were predicted from,
    ``aligned`` when the workflow aligns, whose grey values near each cleft are partner evidence; None: no image,
    for the rule pairings only).

    An existing array with the same layout is kept (resized in place when the dataset grew, ``io.ensure_array``),
    so the blocks done before keep their pieces; cleft ids do not depend on the volume's shape (:func:`cleft_id`).
    """
    params = resolve(params)
    meta = io.read_meta(volume, maps)
    _channel(meta, "cleft")
    shape = meta.spatial_shape
    chunks = tuple(chunk_shape or meta.spatial_chunks)
    record = new_setup("synapses", volume, work_dir, shape=shape, block_shape=block_shape, chunk_shape=chunks,
                       halo=cleft_halo(params, meta.voxel_size), voxel_size=meta.voxel_size,
                       offset_nm=meta.offset_nm, params=params, provenance=provenance.record(params),
                       marker_dir=marker_dir, maps=maps, segmentation=segmentation, raw=raw)
    if raw is None and params["pairing"] == "model":
        raise ValueError("synapses: pairing 'model' needs the image the maps were predicted from (raw)")
    raw_shape = tuple(io.read_meta(volume, raw).spatial_shape) if raw is not None else tuple(shape)
    if raw_shape != tuple(shape):
        raise ValueError(f"synapses: the image '{raw}' in {volume} has shape {raw_shape}, the synapse maps "
                         f"{tuple(shape)}: give the image the maps were predicted from (--raw)")
    io.ensure_array(volume, FRAGMENTS, shape, np.uint64, chunks, meta.voxel_size, meta.offset_nm,
                    is_label=True, attrs={"provenance": record["provenance"]})
    return save_setup(record)


def cleft_block(s: dict, block, context=None) -> dict:
    """Step 2 for one block: threshold, label, write ``cleft_fragments`` and the block's statistics."""
    params = s["params"]
    meta = io.read_meta(s["volume"], s["maps"])
    maps = io.open_array(s["volume"], s["maps"])
    ci = _channel(meta, "cleft")
    cleft_read = np.asarray(maps[(ci, *block.read.slices)])
    mask = threshold_cleft(cleft_read, s["voxel_size"], params)[block.write_in_read]
    prob = probability(cleft_read[block.write_in_read])
    labels, stats = label_block(mask, prob, block.write.offset, params, _inner_faces(grid_of(s), block))
    io.open_array(s["volume"], FRAGMENTS, mode="r+")[block.write.slices] = labels
    atomic_write_parquet(stats, Path(s["work_dir"]) / "stats" / f"{block.id}.parquet")
    return {"pieces": int(len(stats)), "voxels": int(stats["voxels"].sum())}


def finish(work_dir, out_synapses, out_clefts=None, summary=None) -> dict:
    """Step 3 + 4: stitch, write ``clefts``, gather partner statistics, assign, write the tables (last: summary)."""
    start = time.perf_counter()
    s = load_setup(work_dir, "synapses")
    read_markers(s, "synapses")  # every block done
    params = s["params"]
    vs, off = s["voxel_size"], s["offset_nm"]
    grid = grid_of(s, (0, 0, 0))
    frag = io.open_array(s["volume"], FRAGMENTS)
    stats = pd.concat([pd.read_parquet(Path(work_dir) / "stats" / f"{b}.parquet") for b in grid.ids()],
                      ignore_index=True)
    pairs = [np.zeros((0, 2), np.uint64)]
    for block in grid:
        for axis in range(3):
            if block.index[axis] + 1 < grid.grid_shape[axis]:
                pairs.append(face_pairs(lambda sl: frag[sl], grid, block, axis, params["connectivity"]))
    pairs = np.unique(np.concatenate(pairs), axis=0)
    mapping, clefts = merge_pieces(stats, pairs, vs, off, params["min_size_voxels"])

    # Partner pass: blockwise with a halo of the partner radius; also writes `clefts` with the final ids.
    meta = io.read_meta(s["volume"], s["maps"])
    maps = io.open_array(s["volume"], s["maps"])
    ci_pre, ci_post, ci_cleft = _channel(meta, "pre"), _channel(meta, "post"), _channel(meta, "cleft")
    seg = io.open_array(s["volume"], s["segmentation"])
    if params["pairing"] == "model" and not s.get("raw"):
        raise ValueError(f"{work_dir}/setup.json names no image (raw) for pairing 'model': run the setup again")
    raw = io.open_array(s["volume"], s["raw"]) if s.get("raw") else None
    inputs = {"synapse_maps": provenance.array_digest(s["volume"], s["maps"]),
              "segmentation": provenance.array_digest(s["volume"], s["segmentation"])}
    if raw is not None:
        inputs["raw"] = provenance.array_digest(s["volume"], s["raw"])
    if params["pairing"] == "model":
        inputs["partner_model"] = model_digest(params["partner_model"])
    prov = provenance.record(params, inputs)
    out = io.create_array(s["volume"], CLEFTS, s["shape"], np.uint64, s["chunk_shape"], vs, off, is_label=True,
                          attrs={"provenance": prov})
    pgrid = grid_of(s, partner_halo(params, vs))
    centres = {int(r.id): (r.ctr_z, r.ctr_y, r.ctr_x) for r in clefts.itertuples()}
    parts, areas, faces, digests = [], [], [], {}
    for block in pgrid:
        lab = remap(np.asarray(frag[block.read.slices]), mapping)
        out[block.write.slices] = lab[block.write_in_read]
        digests[block.id] = provenance.data_digest(lab[block.write_in_read])
        if not lab.any():
            continue
        p, a, f = partner_stats_block(lab, np.asarray(seg[block.read.slices]),
                                      np.asarray(maps[(ci_pre, *block.read.slices)]),
                                      np.asarray(maps[(ci_post, *block.read.slices)]), block.write_in_read,
                                      block.read.offset, vs, centres, params,
                                      cleft_read=np.asarray(maps[(ci_cleft, *block.read.slices)]),
                                      raw_read=None if raw is None else np.asarray(raw[block.read.slices]))
        parts.append(p)
        areas.append(a)
        faces.append(f)
    provenance.set_array_digest(s["volume"], CLEFTS, provenance.merkle_digest(out.shape, out.dtype, digests))
    pair_stats = combine_pairs(parts) if parts else None
    area = (pd.concat(areas).groupby("id")["area_nm2_x2"].sum() / 2) if areas else pd.Series(dtype=float)
    clefts["size_nm2"] = clefts["id"].map(area).fillna(0.0).to_numpy(float)
    interfaces = combine_interfaces(faces) if faces else None
    if pair_stats is not None:  # the partner evidence, for rescoring without the pass (benchmarks, training)
        atomic_write_parquet(pair_stats, Path(work_dir) / "partner_stats.parquet")
        if interfaces is not None:
            atomic_write_parquet(interfaces, Path(work_dir) / "interfaces.parquet")
    assigned = assign(clefts, pair_stats, params, interfaces, vs)
    table = synapse_table(assigned, vs, off)
    atomic_write_parquet(table, Path(out_synapses))
    if out_clefts:
        atomic_write_parquet(assigned, Path(out_clefts))
    counts = assigned["status"].value_counts().to_dict()
    result = {
        "stage": "synapses", "clefts": int(len(clefts)), "synapses": int(len(table)),
        "status": {k: int(v) for k, v in counts.items()}, "pieces": int(len(stats)),
        "face_pairs": int(len(pairs)), "seconds": round(time.perf_counter() - start, 3),
        "provenance": prov,
    }
    if summary:
        atomic_write_json(summary, result)
    return result


STAGE = Stage("synapses", setup, (Step("synapses", cleft_block),), finish,
              setup_options=(option("--maps", default=SYNAPSE_MAPS, help="synapse map array (channels cleft, pre, "
                                                                        "post)"),
                             option("--segmentation", default="segmentation", help="segment label array"),
                             option("--raw", default="raw", help="the image the synapse maps were predicted from "
                                                                 "(raw, or aligned)")),
              finish_options=(option("--synapses", dest="out_synapses", required=True,
                                     help="synapses.parquet to write"),
                              option("--clefts", dest="out_clefts", help="clefts.parquet (every cleft with its "
                                                                        "status)")))


def detect_synapses(volume, work_dir, params=None, block_shape=(24, 192, 192), out_synapses=None, maps=SYNAPSE_MAPS,
                    segmentation="segmentation", raw: str | None = "raw") -> dict:
    """All steps in one process, through the workflow's runner (tests, notebooks, small volumes). Returns the
    finish summary."""
    work_dir = Path(work_dir)
    setup(volume, work_dir, params, block_shape, maps=maps, segmentation=segmentation, raw=raw)
    run_step(STAGE, work_dir)
    return finish(work_dir, out_synapses or work_dir / "synapses.parquet", work_dir / "clefts.parquet",
                  work_dir / "synapses.json")
