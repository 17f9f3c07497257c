"""Neuroglancer precomputed annotation layers and segment properties, beside the precomputed segmentation.

Written under ``results/{dataset}/precomputed/`` with the ``neuroglancer`` package's ``AnnotationWriter``
(``neuroglancer_annotations_v1``: one spatial chunk, a ``by_id`` index and one index per relationship; coordinates
x, y, z in nm):

* ``synapses/``: one line per synapse from its presynaptic to its postsynaptic point; id = the synapse (cleft) id;
  properties ``size`` (voxels), ``score``; relationships ``pre_segment`` and ``post_segment`` (the partners), so
  selecting a segment lists its synapses.
* ``somata/``: one point per neuron soma; properties ``radius_nm``, ``cell_type`` (enum); relationship ``segment``.
* ``matches/`` (two-photon co-registration, when given): one point per matched ROI at its neuron's soma; properties
  ``roi_id``, ``confidence``, and the tuning ``pref_orientation_deg`` and ``osi`` when given.
* ``segmentation/segment_properties/``: inline segment properties of the neurons (``neuroglancer_segment_properties``):
  a label (``neuron 138 excitatory``), tags (cell type, ``soma``, ``tuned``) and numbers, so the segment list can be
  searched by name or tag. The segmentation's info names the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from connectomix.blocks import atomic_write_json
from connectomix.mesh.precomputed import name_in_info

CELL_TYPES = ("unknown", "excitatory", "inhibitory")
# the annotation layers under precomputed/ and their relationships to segments
LAYERS = {"synapses": ("pre_segment", "post_segment"), "somata": ("segment",), "matches": ("segment",)}


def present(precomputed_dir) -> list[str]:
    """The annotation layers written under a dataset's precomputed folder."""
    return [name for name in LAYERS if (Path(precomputed_dir) / name / "info").exists()]


def _writer(kind: str, relationships=(), properties=()):
    # no uint32 properties: neuroglancer 2.41.2's writer aligns them to 3 bytes, which the client rejects
    from neuroglancer import AnnotationPropertySpec, CoordinateSpace
    from neuroglancer.write_annotations import AnnotationWriter

    space = CoordinateSpace(names=["x", "y", "z"], units="nm", scales=[1, 1, 1])
    return AnnotationWriter(space, kind, relationships=relationships,
                            properties=[AnnotationPropertySpec(**p) for p in properties])


def _xyz(values) -> np.ndarray:
    return np.asarray([list(v) for v in values], float).reshape(-1, 3)


def write_synapses(synapses: pd.DataFrame, out_dir) -> int:
    """The synapse layer (lines pre -> post, relationships to both partners); returns the synapses written."""
    w = _writer("line", LAYERS["synapses"],
                [{"id": "size", "type": "int32", "description": "cleft voxels"},
                 {"id": "score", "type": "float32", "description": "partner assignment score"}])
    pre, post = _xyz(synapses["pre_pt_position"]), _xyz(synapses["post_pt_position"])
    for i, row in enumerate(synapses.itertuples(index=False)):
        w.add_line(pre[i], post[i], id=int(row.id), size=int(row.size), score=float(row.score),
                   pre_segment=[int(row.pre_pt_root_id)] if row.pre_pt_root_id else [],
                   post_segment=[int(row.post_pt_root_id)] if row.post_pt_root_id else [])
    _write(w, out_dir, len(synapses))
    return len(synapses)


def _cell_type_codes(neurons: pd.DataFrame) -> np.ndarray:
    types = neurons.get("cell_type", pd.Series([None] * len(neurons), index=neurons.index))
    return np.array([CELL_TYPES.index(t) if t in CELL_TYPES else 0 for t in types.astype(object)], np.uint8)


def write_somata(neurons: pd.DataFrame, out_dir) -> int:
    """The soma layer (points, cell type as an enum, relationship to the segment); returns the somata written."""
    w = _writer("point", LAYERS["somata"],
                [{"id": "radius_nm", "type": "float32"},
                 {"id": "cell_type", "type": "uint8", "enum_values": list(range(len(CELL_TYPES))),
                  "enum_labels": list(CELL_TYPES)}])
    somata = neurons[neurons["soma_x_nm"].notna()]
    codes = _cell_type_codes(somata)
    for code, row in zip(codes, somata.itertuples(index=False)):
        w.add_point([row.soma_x_nm, row.soma_y_nm, row.soma_z_nm], id=int(row.id),
                    radius_nm=float(row.soma_radius_nm if pd.notna(row.soma_radius_nm) else 0), cell_type=int(code),
                    segment=[int(row.id)])
    _write(w, out_dir, len(somata))
    return len(somata)


def write_matches(matches: pd.DataFrame, neurons: pd.DataFrame, out_dir, tuning: pd.DataFrame | None = None) -> int:
    """The two-photon match layer (a point per matched ROI at its neuron's soma); returns the matches written."""
    table = matches.merge(neurons[["id", "soma_x_nm", "soma_y_nm", "soma_z_nm"]], left_on="neuron_id", right_on="id")
    table = table[table["soma_x_nm"].notna()]
    if tuning is not None:
        table = table.merge(tuning[["roi_id", "pref_orientation_deg", "osi"]], on="roi_id", how="left")
    props = [{"id": "roi_id", "type": "int32"}, {"id": "confidence", "type": "float32"}]
    if tuning is not None:
        props += [{"id": "pref_orientation_deg", "type": "float32"}, {"id": "osi", "type": "float32"}]
    w = _writer("point", LAYERS["matches"], props)
    for row in table.itertuples(index=False):
        extra = ({"pref_orientation_deg": float(row.pref_orientation_deg), "osi": float(row.osi)}
                 if tuning is not None else {})
        w.add_point([row.soma_x_nm, row.soma_y_nm, row.soma_z_nm], id=int(row.roi_id), roi_id=int(row.roi_id),
                    confidence=float(row.confidence), segment=[int(row.neuron_id)], **extra)
    _write(w, out_dir, len(table))
    return len(table)


def _write(writer, out_dir, count: int) -> None:
    if count == 0:  # the writer's bounds would be infinite: a layer with no annotation and finite bounds
        writer.lower_bound[:] = 0
        writer.upper_bound[:] = 1
    writer.write(str(out_dir))


def segment_properties(neurons: pd.DataFrame, tuning: pd.DataFrame | None = None) -> dict:
    """The inline segment properties of the neurons: label, tags (cell type, soma, tuned) and numbers."""
    neurons = neurons[neurons.get("is_neuron", pd.Series(True, index=neurons.index)).astype(bool)]
    codes = _cell_type_codes(neurons)
    tuned = {} if tuning is None else {int(n): r for n, r in zip(tuning["neuron_id"], tuning.itertuples())}
    tags = ["soma", "tuned", *CELL_TYPES[1:]]
    labels, tag_lists, orientation = [], [], []
    for code, row in zip(codes.tolist(), neurons.itertuples(index=False)):
        labels.append(f"neuron {int(row.id)} {CELL_TYPES[code]}" if code else f"neuron {int(row.id)}")
        t = ([0] if pd.notna(row.soma_x_nm) else []) + ([1] if int(row.id) in tuned else [])
        tag_lists.append(t + ([1 + code] if code else []))
        orientation.append(float(tuned[int(row.id)].pref_orientation_deg) if int(row.id) in tuned else -1.0)
    properties = [
        {"id": "label", "type": "label", "values": labels},
        {"id": "tags", "type": "tags", "tags": tags, "values": tag_lists},
        {"id": "n_pre", "type": "number", "data_type": "uint32", "values": [int(v) for v in neurons["n_pre"]]},
        {"id": "n_post", "type": "number", "data_type": "uint32", "values": [int(v) for v in neurons["n_post"]]},
    ]
    if tuned:
        properties.append({"id": "pref_orientation_deg", "type": "number", "data_type": "float32",
                           "description": "preferred orientation, degrees (-1: not tuned)", "values": orientation})
    return {"@type": "neuroglancer_segment_properties",
            "inline": {"ids": [str(int(i)) for i in neurons["id"]], "properties": properties}}


def write_segment_properties(neurons: pd.DataFrame, segmentation_dir, tuning=None) -> int:
    """``segment_properties/info`` of the precomputed segmentation at ``segmentation_dir`` (its info made to name
    it); returns the segments described."""
    out = Path(segmentation_dir) / "segment_properties"
    out.mkdir(parents=True, exist_ok=True)
    props = segment_properties(neurons, tuning)
    atomic_write_json(out / "info", props)
    name_in_info(out, "segment_properties")
    return len(props["inline"]["ids"])


def add_arguments(sub) -> None:
    p = sub.add_parser("annotations", help="precomputed annotation layers (synapses, somata, matches) and segment "
                                           "properties")
    p.add_argument("--precomputed", required=True, help="the dataset's precomputed folder (holds segmentation/)")
    p.add_argument("--synapses", required=True, help="synapses.parquet")
    p.add_argument("--neurons", required=True, help="neurons.parquet (somata, partners counts)")
    p.add_argument("--cell-types", default=None, help="analysis/cell_types.parquet (optional)")
    p.add_argument("--matches", default=None, help="matches.parquet (optional: two-photon matches)")
    p.add_argument("--tuning", default=None, help="analysis/tuning.parquet (optional)")
    p.add_argument("--summary", default=None, help="JSON summary to write last")
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.precomputed)
    neurons = pd.read_parquet(args.neurons)
    if args.cell_types:
        types = pd.read_parquet(args.cell_types, columns=["id", "cell_type"])
        neurons = neurons.drop(columns=["cell_type"], errors="ignore").merge(types, on="id", how="left")
    tuning = pd.read_parquet(args.tuning) if args.tuning else None
    summary = {
        "synapses": write_synapses(pd.read_parquet(args.synapses), out / "synapses"),
        "somata": write_somata(neurons, out / "somata"),
        "segment_properties": write_segment_properties(neurons, out / "segmentation", tuning),
    }
    if args.matches:
        summary["matches"] = write_matches(pd.read_parquet(args.matches), neurons, out / "matches", tuning)
    if args.summary:
        atomic_write_json(args.summary, summary)
    print(json.dumps(summary))
    return 0
