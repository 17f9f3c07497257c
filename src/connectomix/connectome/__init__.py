"""The connectome: neurons, edges and the connectivity matrix from ``synapses.parquet`` and the segment tables.

Outputs (``results/{dataset}/``):

* ``neurons.parquet``: one row per segment (``segments.parquet`` ids, plus any synaptic partner missing there):
  ``id``, ``kind`` (``neuron`` when the segment has a soma in the volume, else ``orphan``: a fragment, kept and
  counted), ``is_neuron``, ``soma_z_nm``, ``soma_y_nm``, ``soma_x_nm``, ``soma_radius_nm``, ``soma_volume_nm3``
  (NaN for orphans, and the volume also when the morphology measured no soma body), ``soma_truncated`` (the soma
  body reaches the volume's edge: its size is a lower bound),
  ``soma_source`` (``morphology`` or ``distance_transform``), ``volume_voxels``, ``volume_nm3``, ``n_pre``
  (outgoing synapses), ``n_post`` (incoming), the numeric morphology features of ``morphology.parquet`` (prefixed
  ``morph_``) and ``cell_type`` (string, empty here; the analysis stage fills it).
* ``edges.parquet``: neuron -> neuron edges with at least ``min_synapses`` synapses: ``pre``, ``post``,
  ``n_synapses``, ``size_voxels``, ``size_nm2`` (summed cleft sizes), ``mean_score``. ``edges_all.parquet``: the same
  for every segment pair (orphans included) with ``pre_is_neuron``, ``post_is_neuron``.
* ``connectome/connectivity.npz``: scipy.sparse CSR of synapse counts, rows = pre, columns = post, in the order of
  the ``ids`` array stored in the same file (``scipy.sparse.load_npz`` reads the matrix, ``np.load(f)['ids']`` the
  order); ``connectome/connectivity.png``: the matrix as a figure; ``connectome/summary.json``: counts.

Soma detection (``somata``), the tables, matrix and figure (``tables``) and ``connectomix connectome`` (``cli``).
"""

from connectomix.connectome.somata import soma_by_distance_transform, somata_from_morphology
from connectomix.connectome.tables import (
    build, connectivity_matrix, edge_tables, neuron_table, plot_matrix, resolve, save_matrix,
)

__all__ = ["build", "connectivity_matrix", "edge_tables", "neuron_table", "plot_matrix", "resolve", "save_matrix",
           "soma_by_distance_transform", "somata_from_morphology"]
