"""``connectomix segment``: watershed fragments, global agglomeration, stitching and relabelling, blockwise.

Actions (one Snakemake job each; the block steps take ``--blocks``; :mod:`connectomix.blockwise`)::

    segment setup       --volume V --work-dir W --params JSON --block-shape Z Y X [--chunk-shape Z Y X]
    segment block       --work-dir W --step fragments --blocks z0_y0_x0 ...
    segment block       --work-dir W --step rag --blocks ...      (after the fragments of its lower neighbours)
    segment agglomerate --work-dir W                              (global: merged RAG -> lookup table)
    segment block       --work-dir W --step relabel --blocks ...  (writes `segmentation`)
    segment finish      --work-dir W --segments results/{dataset}/segments.parquet --summary S.json

``W`` is ``results/{dataset}/segment``; block markers go to ``results/{dataset}/blocks/segment_{step}/{block}.json``.
:func:`segment_volume` runs them all in one process.

Modules: ``params``, ``fragments`` (watershed), ``rag`` (region adjacency graph), ``agglomerate``, ``stitch``
(setup / block steps / finish, ``STAGE``), ``cli``; ``workflow`` holds helpers of the rules.
"""

from __future__ import annotations

from connectomix.segment.agglomerate import agglomerate as agglomerate_rag
from connectomix.segment.agglomerate import apply_lut, hierarchical, lookup_table, mutex
from connectomix.segment.fragments import block_fragments, fragment_id_base, watershed_fragments
from connectomix.segment.params import resolve
from connectomix.segment.rag import Rag, block_rag, merge_rags, volume_rag
from connectomix.segment.stitch import STAGE, segment_volume

__all__ = [
    "STAGE", "Rag", "agglomerate_rag", "apply_lut", "block_fragments", "block_rag", "fragment_id_base",
    "hierarchical", "lookup_table", "merge_rags", "mutex", "resolve", "segment_volume", "volume_rag",
    "watershed_fragments",
]

