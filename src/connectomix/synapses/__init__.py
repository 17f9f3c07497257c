"""Synaptic clefts and their partners: ``synapse_maps`` + ``segmentation`` -> ``synapses.parquet``.

The flow (:mod:`connectomix.blockwise`; Snakemake runs each step as a job, :func:`detect_synapses` runs them all in
one process):

1. ``setup``: create the empty ``cleft_fragments`` array (uint64, same grid as ``synapse_maps``).
2. ``block`` (per block of the shared :class:`~connectomix.blocks.BlockGrid`): read the cleft channel over the read
   ROI (halo for optional smoothing), threshold it, take connected components (cc3d) of the *write* ROI and write
   them with provisional ids ``cleft_id(first voxel)`` (:func:`cleft_id` packs the global voxel coordinates, so ids
   sort in C order and do not depend on the volume's shape: they stay when the dataset grows; the first voxel in C
   order inside the block is the piece's lowest voxel). Small pieces that touch no inner block face
   are complete and dropped at once; statistics go to ``{work_dir}/stats/{block}.parquet`` and the marker
   ``blocks/synapses/{block}.json`` is written last.
3. ``finish`` (one job) stitches: union-find (``scipy.sparse.csgraph``) over pairs of provisional ids that touch across block
   faces, with the component connectivity (6/18/26: diagonal neighbours across faces, edges and corners included),
   so the result equals connected components of the whole thresholded volume. Each cleft's stable id is
   ``cleft_id(its lowest voxel)`` (the smallest provisional id in it); clefts smaller than
   ``min_size_voxels`` are dropped. Then a pass over the blocks (halo = the partner radius) writes ``clefts`` with
   the final ids and collects, for every (cleft, segment) pair, the segment's voxels within ``partner_radius_nm``
   of that cleft (nearest-cleft assignment by a Euclidean distance transform in nm): their count, summed ``pre`` and
   ``post`` probabilities, voxels within ``contact_nm`` (contact area), and the point of the segment nearest to the
   cleft's centre; and, for every pair of segments, the voxel faces they share on the cleft (both voxels within
   ``interface_nm`` of it: the contact the cleft lies on, :func:`interface_faces`, with its centre and lowest voxel
   on each side), and the voxel counts and summed pre / post / cleft probabilities and grey values (of ``raw``, the
   image the maps were predicted from) per distance band (``partners.BANDS_NM``: on the cleft, then up to 40, 80,
   160 nm). Sums over blocks equal the whole-volume sums, so block size never changes the result. The summed pair
   statistics and contacts are kept as ``partner_stats.parquet`` and ``interfaces.parquet`` in the work folder.
4. Partner assignment (:func:`assign`): candidates are segments with ``>= min_contact_voxels`` contact
   voxels. With ``pairing: model`` (config.yaml) every ordered pair of distinct candidates is scored by a small
   classifier (:mod:`~connectomix.synapses.partner_model`, weights ``partner_model``) from features of the
   cleft, of both sides (channels and grey values) and of their contact. Each contact of two candidates on a
   cleft is a site of its own (neighbouring synapses merged in one cleft come apart), else the whole cleft is
   one; per site the best pair wins and is a synapse when its ``partner_score`` reaches ``min_partner_score``
   (a cleft with none: ``low_score``; one candidate: ``unclear_polarity``). The rules
   (:func:`assign_partners`): with ``pairing: interface`` (the schema's default) a cleft that lies on a contact
   of two candidates is judged between
   that pair alone (the pair sharing the most faces on it): a synapse joins the two cells whose contact it is, and
   the pre/post channels only decide which side is which (the channel means of small bystanders near a cleft are
   noisy: benchmarks/results/synapse_partners.md). A cleft on no contact (inside one segment, or
   ``pairing: candidates``) is judged among all its candidates: pre = the candidate with the highest mean ``pre``
   probability, post = the one with the highest mean ``post``. Rejected: ``no_segment`` (no candidate),
   ``autapse`` (the same segment wins both, with both probabilities high, and no other candidate has a signal: one
   object on both sides), ``unclear_polarity`` (a partner's own pre-minus-post margin below ``min_polarity``, a
   partner's probability below ``min_partner_prob``, or one segment winning both channels while another also has a
   signal). ``score`` = mean cleft probability x the smaller of the two polarity margins (0..1). With ``polarity: relative`` the sides are compared with each
   other instead (for maps whose pre/post levels are not calibrated but ordered): among two or more candidates,
   pre = the highest mean pre minus mean post, post = the lowest; the margin is half the difference of the two.

Output ``synapses.parquet`` (CAVE-style, one row per accepted cleft):

* ``id`` (uint64: the cleft's label in ``clefts`` for the cleft's best synapse; a further synapse on the same cleft
  (``pairing: model``) takes the id of its contact's lowest voxel, packed as cleft ids are), ``cleft_id`` (the
  cleft's label), ``pre_pt_root_id``, ``post_pt_root_id`` (segment ids);
* ``pre_pt_position``, ``post_pt_position``, ``ctr_pt_position``: **lists [x, y, z] in nm** (CAVE order, x first;
  voxel (0, 0, 0) sits at the array's ``offset_nm``). ``ctr`` is the cleft's centre of mass; ``pre``/``post`` are
  voxels inside the partner segments next to the cleft (nearest to its centre among contact voxels; with
  ``pairing: model``, for a synapse on a contact: ``ctr`` is the contact's centre, ``pre``/``post`` its lowest
  voxel in each partner);
* ``size`` (cleft voxels, int), ``size_nm2`` (cleft area: half its exposed surface, nm^2), ``score`` (0..1),
  ``partner_score`` (0..1: the classifier's score of the pair with ``pairing: model``, else = ``score``),
  ``cleft_prob``, ``pre_prob``, ``post_prob`` (mean probabilities), ``contact_voxels`` (pre, post).

``clefts.parquet`` (beside it) lists every cleft, accepted or not, with ``status`` (``accepted`` or the rejection
reason), ``synapse_id`` and the same positions: one row per synapse on the cleft (several where a cleft holds
several), or one row with the reason; ``synapses.json`` summarises the counts.

Modules: ``params`` (parameters, halos), ``clefts`` (threshold, block labels, face merge), ``partners`` (partner
statistics, the rules, the synapse table), ``partner_model`` (the classifier: features, scoring, training),
``blockwise`` (setup / block / finish, ``STAGE``), ``cli``.
"""

from __future__ import annotations

from connectomix.synapses.blockwise import CLEFTS, FRAGMENTS, STAGE, SYNAPSE_MAPS, detect_synapses, finish, setup
from connectomix.synapses.clefts import cleft_id, cleft_voxel, face_pairs, label_block, merge_pieces, threshold_cleft
from connectomix.synapses.params import cleft_halo, partner_halo, resolve
from connectomix.synapses.partner_model import PartnerModel, assign
from connectomix.synapses.partners import assign_partners, combine_interfaces, combine_pairs, interface_faces
from connectomix.synapses.partners import partner_stats_block, synapse_table

__all__ = [
    "CLEFTS", "FRAGMENTS", "STAGE", "SYNAPSE_MAPS", "PartnerModel", "assign", "assign_partners", "cleft_halo",
    "cleft_id", "cleft_voxel", "combine_interfaces",
    "combine_pairs", "detect_synapses", "face_pairs", "finish", "interface_faces", "label_block", "merge_pieces",
    "partner_halo", "partner_stats_block", "resolve", "setup", "synapse_table", "threshold_cleft",
]
