"""Ingest: read raw EM sections (TIFF, PNG/JPEG sequences, HDF5, zarr, N5) into the dataset's OME-Zarr ``raw``.

The output is always ``raw`` (uint8, axes z, y, x) in ``results/{dataset}/volume.zarr`` with a mean pyramid,
written through ``connectomix.io``. Reading streams: image sequences and multi-page TIFFs section by section,
containers (HDF5, zarr, N5) in slabs of ``chunk_shape[0]`` sections, so memory holds one slab, never the volume.

Sources (the ``source:`` mapping of a dataset in the config):

* ``path``: a folder of one image per section (``pattern`` selects files, natural sort: ``2.png`` before
  ``10.png``; hidden files and files without an image extension are ignored and listed in the summary), a
  multi-page TIFF, an HDF5 file, or a zarr (v2/v3) / N5 container.
* ``format``: ``auto`` (default) infers it from the path: ``.h5/.hdf5/.hdf/.he5`` HDF5, ``.zarr`` or a folder with
  ``.zarray/.zgroup/zarr.json`` zarr, ``.n5`` or a folder whose ``attributes.json`` has an ``n5`` version N5,
  ``.tif/.tiff`` file a multi-page TIFF, a folder of images by the images' extension.
* ``key``: the dataset inside HDF5 (required), zarr/N5 (optional when ``path`` is the array itself).
* ``normalize``: how input becomes uint8, see :func:`plan_normalization`.

Greyscale only. Colour images follow one rule: RGB(A) whose colour channels are all equal (grey saved as RGB) is
read as that grey channel, alpha ignored; a section with differing channels is refused (convert it yourself:
EM has no colour, so colour means the wrong file). Grey+alpha takes the grey channel. 1-bit images become 0/255.

Extending a dataset: when ``raw`` already holds an ingest of the same source, ROI offset, voxel size, offset and
chunks, and the new ROI (or the source itself, without ``roi``) is larger along some axes and smaller along none,
ingest grows ``raw`` in place and reads only the new region (+ z, + y, + x of the old box), with the
normalization recorded by the first ingest (planned once per dataset, so the old voxels keep their values and the
blocks computed from them stay valid). A smaller ROI with the same source and offset is refused
(:func:`check_extension`): a dataset only grows, in + directions, its block grid anchored at the ROI offset.

Bad input (unreadable, corrupt or truncated image, mixed section shapes or dtypes, missing key, empty folder,
NaN/inf, a single section, unknown format, colour) raises ``ValueError``/``FileNotFoundError`` naming the file and
the problem. On any failure the ``raw`` array is deleted (and the volume folder, when this call created it), so
a rerun never trusts a partial output. A source whose files changed since the last ingest (:func:`source_identity`
for the workflow; size, modification time and sha256 recorded in the provenance) is ingested afresh.
"""

from connectomix.ingest.core import RAW, check_extension, ingest, previous_ingest, source_identity
from connectomix.ingest.n5 import N5Array
from connectomix.ingest.normalize import PERCENTILES, Normalization, plan_normalization, sample_sections
from connectomix.ingest.readers import probe
from connectomix.ingest.source import FORMATS, MIN_SECTIONS, NORMALIZE, SourceInfo, natural_key

__all__ = ["FORMATS", "MIN_SECTIONS", "NORMALIZE", "PERCENTILES", "RAW", "N5Array", "Normalization", "SourceInfo",
           "check_extension", "ingest", "natural_key", "plan_normalization", "previous_ingest", "probe",
           "sample_sections", "source_identity"]
