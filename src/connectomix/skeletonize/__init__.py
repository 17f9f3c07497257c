"""``connectomix skeletonize``: blockwise kimimaro skeletons, merged per segment, and morphology.

Actions (each one Snakemake job kind; ``setup``, ``block`` and ``finish`` follow :mod:`connectomix.blockwise`):

* ``setup``: record the parameters, the label array and the block grid (halo ``params.halo``) in
  ``{work_dir}/setup.json``.
* ``somata``: find the somata of the label array once for the whole volume (``soma.find_somata_in_volume``):
  ``{work_dir}/somata.parquet``, read by every block (each clears the somata's spheres before tracing) and by
  ``finish`` (which joins each soma's neurites to its centre). Without it, no soma.
* ``block``: skeletonize blocks (read ROI = write ROI + halo), crop to the write ROI, save the pieces
  (``{work_dir}/pieces/{block}.npz``); the marker ``blocks/skeletonize/{block}.json`` is written last.
* ``finish``: fuse every segment's pieces into one tree (see ``connectomix.skeletonize.core``) and write
  ``skeletons.parquet`` (layout in ``connectomix.skeletonize.morphology``) and a JSON summary.
* ``morphology``: per-segment cable length, branch points, tips, radii, soma, extent, axon/dendrite split.

Modules: ``params``, ``tree`` (``Skel``), ``soma``, ``trace`` (kimimaro per block), ``merge``, ``core`` (the
pipeline in memory), ``morphology``, ``blockwise`` (setup / block / finish, ``STAGE``), ``cli``.
"""

from __future__ import annotations

from connectomix.skeletonize.blockwise import SOMATA, STAGE, finish, setup, skeletonize_one
from connectomix.skeletonize.core import skeletonize_blockwise, skeletonize_whole
from connectomix.skeletonize.merge import finalize, merge_all, merge_pieces
from connectomix.skeletonize.params import resolve
from connectomix.skeletonize.soma import somata_nm
from connectomix.skeletonize.trace import kimimaro_skeletons, load_pieces, save_pieces, skeletonize_block
from connectomix.skeletonize.tree import Skel, to_tree

__all__ = [
    "SOMATA", "STAGE", "Skel", "finalize", "finish", "kimimaro_skeletons", "load_pieces", "merge_all", "merge_pieces",
    "resolve", "save_pieces", "setup", "skeletonize_block", "skeletonize_blockwise", "skeletonize_one",
    "skeletonize_whole", "somata_nm", "to_tree",
]
