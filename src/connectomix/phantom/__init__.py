"""The ground-truth phantom: a synthetic EM block of dense neuropil with complete structural and functional
ground truth, generated deterministically from a seed. The default dataset of `make demo` and the reference
every stage's accuracy is measured against.

    params = PhantomParams.from_dict(config["datasets"]["phantom"]["phantom"])
    ph = generate(params, voxel_size=(40, 8, 8))
    write(ph, "results/phantom", "results/phantom/volume.zarr", chunk_shape=(8, 64, 64))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage

from connectomix.phantom import defects, function, render, synapses, tissue
from connectomix.phantom.params import PhantomParams
from connectomix.phantom.writer import write_phantom

__all__ = ["Phantom", "PhantomParams", "generate", "write", "measure"]


@dataclass
class Phantom:
    """A generated block: image, ground-truth volumes, tables (columns as docs/data-contracts.md) and stats.

    Positions in the tables are nm with voxel (0, 0, 0) at the origin; ``write`` shifts them by the offset.
    """

    params: PhantomParams
    voxel_size: tuple
    raw: np.ndarray
    labels: np.ndarray
    clefts: np.ndarray
    mito: np.ndarray
    neurons: pd.DataFrame
    objects: pd.DataFrame
    synapses: pd.DataFrame
    edges: pd.DataFrame
    rois: pd.DataFrame
    stimuli: pd.DataFrame
    responses: np.ndarray
    affine: np.ndarray
    stats: dict = field(default_factory=dict)
    # serial-section misalignment and defects (params misalign_*, elastic_*, sections, folds, cracks): the defect
    # mask (uint8 bit flags, connectomix.phantom.defects) and the ground-truth tables; None without any
    misalignment: dict | None = None


def generate(params: PhantomParams, voxel_size=(40, 8, 8)) -> Phantom:
    """Generate the phantom (deterministic for ``params.seed``)."""
    start = time.perf_counter()
    voxel = np.asarray(voxel_size, dtype=np.float64)
    rng = np.random.default_rng(params.seed)
    geo = tissue.build(params, voxel, rng)
    n = params.n_neurons

    pref, width = function.tuning(rng, n)
    orientation = {i + 1: pref[i] for i in range(n)}
    sites, site_volume = synapses.contact_sites(geo.labels, geo.kind, n, voxel)
    neuron_sites = sites[sites.pre <= n]
    orphan_sites = sites[sites.pre > n]
    # ranked candidates, twice the quota: contacts too small for a cleft are passed over
    wired = synapses.choose_synapses(rng, neuron_sites, synapses.like_to_like_weight(
        neuron_sites, orientation, params.like_to_like), 2 * params.n_synapses)
    taken = wired[["ctr_z_nm", "ctr_y_nm", "ctr_x_nm"]].to_numpy()[:params.n_synapses]
    orphans = synapses.choose_synapses(rng, orphan_sites, np.ones(len(orphan_sites)), 2 * params.n_orphan_synapses,
                                       taken=taken)
    clefts, syn_table = synapses.draw_clefts([(wired, params.n_synapses), (orphans, params.n_orphan_synapses)],
                                             site_volume, geo.labels, voxel)

    mito = render.mitochondria(rng, geo.labels, geo.kind, geo.segments, params.mito_density, voxel)
    mito &= clefts == 0
    nuclei = render.nuclei_mask(geo.neurons, geo.labels, voxel)
    raw = render.render(rng, params, geo.labels, geo.kind, mito, clefts, syn_table, nuclei, voxel)

    voxels = np.bincount(geo.labels.ravel().astype(np.int64), minlength=max(geo.objects) + 1)
    neurons = pd.DataFrame({
        "id": np.arange(1, n + 1, dtype=np.uint64),
        "cell_class": [nr.cell_class for nr in geo.neurons],
        "soma_z_nm": [nr.soma[0] for nr in geo.neurons],
        "soma_y_nm": [nr.soma[1] for nr in geo.neurons],
        "soma_x_nm": [nr.soma[2] for nr in geo.neurons],
        "soma_radius_nm": [nr.soma_radius for nr in geo.neurons],
        "pref_orientation_deg": pref,
        "tuning_width_deg": width,
    })
    extent = np.array(params.shape) * voxel
    affine = function.imaging_affine(rng)
    rois, imaged, _ = function.roi_table(rng, neurons, affine, params.imaged_fraction, params.extra_rois,
                                         params.roi_jitter_um, extent)
    neurons["imaged"] = imaged
    stim, per_neuron = function.responses(rng, pref, width, params.n_orientations, params.n_trials,
                                          params.response_noise)
    # ROIs without an EM partner are cells outside the block: tuned too, with their own preferences
    unmatched = rois["neuron_id"].to_numpy() == 0
    _, outside = function.responses(rng, *function.tuning(rng, int(unmatched.sum())), params.n_orientations,
                                    params.n_trials, params.response_noise)
    responses = np.zeros((len(rois),) + per_neuron.shape[1:], dtype=np.float32)
    index = {int(i): k for k, i in enumerate(neurons["id"])}
    responses[~unmatched] = per_neuron[[index[int(i)] for i in rois["neuron_id"][~unmatched]]]
    responses[unmatched] = outside
    objects = pd.DataFrame({
        "id": np.array(sorted(geo.objects), dtype=np.uint64),
        "kind": [geo.objects[i]["kind"] for i in sorted(geo.objects)],
        "neuron_id": np.array([i if geo.objects[i]["kind"] == "neuron" else 0 for i in sorted(geo.objects)],
                              dtype=np.uint64),
        "voxels": [int(voxels[i]) for i in sorted(geo.objects)],
    })
    objects = objects[objects.voxels > 0].reset_index(drop=True)
    between_neurons = syn_table[syn_table.pre <= n]
    edges = (between_neurons.groupby(["pre", "post"]).size().rename("n_synapses").reset_index()
             if len(between_neurons) else pd.DataFrame({"pre": [], "post": [], "n_synapses": []}))
    edges = edges.astype({"pre": np.uint64, "post": np.uint64, "n_synapses": np.int64})
    ph = Phantom(
        params=params, voxel_size=tuple(float(v) for v in voxel), raw=raw, labels=geo.labels, clefts=clefts,
        mito=mito.astype(np.uint8), neurons=neurons, objects=objects, synapses=syn_table, edges=edges, rois=rois,
        stimuli=pd.DataFrame({"stimulus_id": np.arange(len(stim)), "orientation_deg": stim}),
        responses=responses, affine=affine,
    )
    ph.stats = measure(ph)
    ph.stats["like_to_like_slope"] = synapses.like_to_like_slope(neurons, edges)
    ph.stats["contact_sites"] = int(len(neuron_sites))
    ph.stats["orphan_contact_sites"] = int(len(orphan_sites))
    ph.stats["n_neuron_synapses"] = int((syn_table.pre <= n).sum())
    if defects.active(params):  # raw is deformed after the image statistics, measured in the aligned frame
        ph.raw, mask, drawn, elastic = defects.apply(raw, params, voxel)
        sections, points = defects.truth_tables(drawn, elastic, mask, params, voxel)
        ph.misalignment = {"defects": mask, "sections": sections, "points": points}
        ph.stats["defect_sections"] = {k: int(v) for k, v in sections.status.value_counts().items() if k != "ok"}
    ph.stats["generation_seconds"] = round(time.perf_counter() - start, 2)
    return ph


def measure(ph: Phantom) -> dict:
    """Image and structure statistics: density, membrane/cytoplasm contrast, section correlation, counts."""
    labels, raw = ph.labels, ph.raw.astype(np.float32)
    membrane = render.membranes(labels, np.random.default_rng(0), ph.voxel_size) & (labels > 0)
    border = tissue.inplane_border(labels)
    near = ndimage.binary_dilation(border, structure=np.ones((1, 5, 5), bool))
    cytoplasm = (labels > 0) & ~near & (ph.mito == 0) & (ph.clefts == 0)
    corr = [np.corrcoef(raw[z].ravel(), raw[z + 1].ravel())[0, 1] for z in range(raw.shape[0] - 1)]
    return {
        "density": float(np.count_nonzero(labels) / labels.size),
        "ecs_fraction": float(np.count_nonzero(labels == 0) / labels.size),
        "membrane_mean": float(raw[border & (labels > 0)].mean()),
        "cytoplasm_mean": float(raw[cytoplasm].mean()),
        "membrane_to_cytoplasm": float(raw[border & (labels > 0)].mean() / raw[cytoplasm].mean()),
        "adjacent_section_correlation": float(np.mean(corr)) if corr else float("nan"),
        "n_objects": int(len(ph.objects)),
        "n_neurons": int(len(ph.neurons)),
        "n_synapses": int(len(ph.synapses)),
        "n_edges": int(len(ph.edges)),
        "n_rois": int(len(ph.rois)),
        "membrane_voxel_fraction": float(membrane.mean()),
    }


def write(ph: Phantom, out_dir, volume_root, chunk_shape=(8, 64, 64), offset_nm=(0, 0, 0),
          pyramid_levels: int = 1, pyramid_factor=(1, 2, 2)) -> None:
    """Write the phantom: arrays into the OME-Zarr, tables and figures under ``out_dir/gt`` (see the contract)."""
    write_phantom(ph, out_dir, volume_root, chunk_shape, offset_nm, pyramid_levels, pyramid_factor)
