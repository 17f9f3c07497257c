"""``connectomix mesh``: blockwise zmesh meshes, merged per segment, as Neuroglancer precomputed meshes.

Actions (each one Snakemake job kind, :mod:`connectomix.blockwise`):

* ``setup``: record the parameters, the label array and the block grid (halo one voxel) in
  ``{work_dir}/setup.json``.
* ``block``: marching cubes (zmesh) of each block's write ROI plus one voxel on its high sides, unsimplified
  pieces saved to ``{work_dir}/pieces/{block}.npz``; the marker ``blocks/mesh/{block}.json`` is written last.
* ``finish``: weld every segment's pieces (seamless: ``core``), simplify, write precomputed legacy meshes into
  the ``mesh`` folder of the precomputed segmentation (``precomputed``), then a JSON summary.

Modules: ``core`` (meshing, welding, simplification), ``precomputed`` (the file format), ``blockwise``
(setup / block / finish, ``STAGE``), ``cli``.
"""

from __future__ import annotations

from connectomix.mesh.blockwise import HALO, STAGE, finish, merge_pieces, mesh_one, resolve, setup
from connectomix.mesh.core import area, mesh_block, mesh_labels, mesh_whole, open_edges, simplify, weld
from connectomix.mesh.precomputed import read_fragment, write_legacy

__all__ = [
    "HALO", "STAGE", "area", "finish", "merge_pieces", "mesh_block", "mesh_labels", "mesh_one", "mesh_whole",
    "open_edges", "read_fragment", "resolve", "setup", "simplify", "weld", "write_legacy",
]
