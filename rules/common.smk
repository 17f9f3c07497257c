# The validated config and the input, param and resource functions of the rule files, thin wrappers binding the config
# to connectomix.workflow (paths, grids, targets, digests, resources), which holds the logic. A rule file uses
# only the names defined here and its own.
from connectomix import config as cmx_config
from connectomix.blocks import parse_batch_id
from connectomix.workflow import Workflow, digests, targets
from connectomix.workflow import predict as wf_predict, resources as wf_resources
from connectomix.workflow.args import json_arg, options as cli_options, roi_args as _roi_args, zyx
from connectomix.ingest import source_identity as ingest_source_identity

# The one validation of the config: against the schema, defaults filled; an error is one line naming the key path.
CFG = cmx_config.validate(config, source="config")
# The shipped model is found in the repository when the working directory (--directory) has no copy of it.
wf_predict.locate_shipped_models(CFG, workflow.basedir)
WF = Workflow(CFG)
PATHS = WF.paths
DATASETS = WF.datasets
DATASET_GROUPS = targets.dataset_groups(WF)
FUNCTIONAL = targets.functional_files(WF)
ENV = "../envs/connectomix.yaml"


def datasets_in(group):
    """Wildcard constraint: the datasets of a group (connectomix.workflow.targets.dataset_groups)."""
    return "|".join(DATASET_GROUPS[group] or ["__none__"])


def final_targets(name):
    """What the default rule asks for a dataset."""
    return targets.final_targets(WF, name, DATASET_GROUPS)


def eval_targets(name):
    """Every eval/{stage}.json of a dataset."""
    return targets.eval_targets(WF, name, DATASET_GROUPS)


def dataset_cfg(name):
    return WF.dataset(name)


def dataset_dir(wc):
    return PATHS.dataset_dir(wc.dataset)


def volume_of(wc):
    return PATHS.volume(wc.dataset)


def marker_dir(wc):
    return PATHS.marker_dir(wc.dataset)


def work_dir(stage):
    """Param function: a stage's work folder."""
    return lambda wc: PATHS.work_dir(stage, wc.dataset)


def raw_done(wc):
    """Input function: the file that says `raw` (with its pyramid) is complete."""
    return WF.raw_done(wc.dataset)


def roi_args(wc):
    """CLI arguments cropping a dataset to its configured ROI (empty when it has none)."""
    return _roi_args(dataset_cfg(wc.dataset).get("roi"))


def functional_file(part):
    """Param function: a dataset's functional file (rois, responses or stimuli)."""
    return lambda wc: FUNCTIONAL[wc.dataset][part]


def functional_inputs(wc):
    return targets.functional_inputs(WF, wc.dataset)


_GROUND_TRUTH = {
    "segmentation": targets.segmentation_gt,
    "clefts": targets.clefts_gt,
    "train": lambda wf, name: wf_predict.train_ground_truth(wf.cfg, name, wf.is_phantom(name)),
}


def annotation_inputs(wc):
    """Input function of export_annotations: a functional dataset's matches, cell types and tuning (else none)."""
    return targets.annotation_inputs(WF, wc.dataset, DATASET_GROUPS)


def annotation_args(wc):
    """Param of export_annotations: the CLI options naming annotation_inputs."""
    return cli_options(annotation_inputs(wc))


def gt_files(kind):
    """Input function: the ground-truth files of a dataset for `kind` (segmentation, clefts, train)."""
    return lambda wc: _GROUND_TRUTH[kind](WF, wc.dataset)[0]


def gt_args(kind):
    """Param function: the CLI arguments locating them (shell-quoted)."""
    return lambda wc: _GROUND_TRUTH[kind](WF, wc.dataset)[1]


def resources_of(rule):
    """A rule's mem_mb and runtime (connectomix.workflow.resources.COSTS)."""
    return wf_resources.rule_resources(WF, rule)


def batch_blocks(wc):
    """The block ids of a batch job, as CLI arguments."""
    return " ".join(WF.batch_blocks(wc.dataset, wc.batch))


def batch_record(wc):
    """The batch marker's content (shell-quoted JSON), written after the stage's CLI succeeded."""
    return json_arg({"batch": wc.batch, "blocks": WF.batch_blocks(wc.dataset, wc.batch)})


def batch_markers(step):
    """Input function: every batch marker of a blockwise step (for the step that gathers it)."""
    return lambda wc: WF.batch_markers(wc.dataset, step)


# Extending a dataset (a larger ROI, or a source that gained data; + directions only). The block grid is anchored
# at the volume's origin, so old blocks keep their ids and ROIs; ingest and the setup steps keep their arrays
# (resized in place); fragment ids follow each fragment's first voxel, so unchanged segments keep their ids.
# Block rules name what defines their result as params and inputs:
#   * dataset_identity: what every block depends on besides its ROI;
#   * batch_roi: the batch's read ROI with the stage's halo plus one voxel (it changes for blocks next to new ones);
#   * the batch markers of the previous blockwise stage whose blocks it reads (batches_meeting);
#   * the stage's config.
# The setup steps (they create the arrays, and resize them when the dataset grew) are checkpoints, and block
# rules take their marker through setup_of(): ancient, so a rerun setup does not rerun every block. Snakemake
# 9.27 skips, for the rest of that invocation, every job behind an ancient input whose producer reruns, even
# new jobs with missing outputs (snakemake issue #4166); behind a checkpoint the DAG is rebuilt once the setup
# ran, so the new blocks and the blocks whose params changed do run. The dry run cannot know that before the
# setups ran and lists every block behind a setup that will rerun; `snakemake --until predict_setup
# segment_setup synapses_setup` first gives the exact plan. Everything a setup rerun could change for a block
# must therefore be in the block's params or non-ancient inputs (dataset_identity, the stage config, the ROI).
# A setup records what defines a block's result in {stage}/setup.json (connectomix.blockwise), which the block
# jobs read: the setup rule takes it as params too, so that a change reruns the setup before the blocks.
# Batch ids are stable when the grid grows only with a fixed blocks.per_job (with "auto" the brick may change).


def setup_of(checkpoint):
    """Input function: a stage's setup marker (a checkpoint's output), ancient (see "Extending a dataset")."""
    return lambda wc: ancient(getattr(checkpoints, checkpoint).get(dataset=wc.dataset).output[0])


def dataset_identity(wc):
    """Param: the dataset's config (for a source dataset without roi.shape: the ROI may grow), the storage chunks
    and the block shape, as JSON."""
    return WF.identity(wc.dataset)


def batch_roi(stage=None):
    """Param function: the read ROI (offset + shape) of a batch's blocks with `stage`'s halo + 1 voxel per axis
    (None: no halo)."""
    return lambda wc: WF.batch_roi(wc.dataset, wc.batch, WF.halo(stage, wc.dataset))


def batches_meeting(step, stage):
    """Input function: the batch markers of blockwise `step` that the blocks of this batch read, with `stage`'s
    halo."""
    return lambda wc: WF.batches_meeting(wc.dataset, wc.batch, step, WF.halo(stage, wc.dataset))


def somata_digest(wc):
    """Param of skeletonize_block: a digest of the somata (skeletonize/somata.parquet, a checkpoint's output)
    whose cleared sphere reaches the batch's read ROI; once the checkpoint ran, the blocks whose somata changed
    rerun (a soma far away does not touch a block)."""
    roi = WF.grid(wc.dataset, WF.halo("skeletonize", wc.dataset)).brick_read_roi(*parse_batch_id(wc.batch))
    somata = PATHS.file("skeletonize/somata.parquet", wc.dataset)
    return digests.somata_digest(somata, roi, dataset_cfg(wc.dataset)["voxel_size"])


def raw_reads(*stages, extra=(0, 0, 0)):
    """Param function: a digest of the raw voxels a batch's result depends on, through the chain of `stages` that
    read them (their halos add up, plus `extra`): e.g. a fragments block reads affinities (segment halo), each
    predicted from raw (predict halo). It is known once ingest ran, so a changed source reruns exactly the batches
    whose raw changed; a phantom's raw follows its params, which dataset_identity holds."""

    def _digest(wc):
        if WF.is_phantom(wc.dataset):
            return "phantom"
        halo = [int(e) for e in extra]
        for stage in stages:
            halo = [h + int(s) for h, s in zip(halo, WF.halo(stage, wc.dataset))]
        return digests.raw_digest(PATHS.summary("ingest", wc.dataset), WF.blocks_read(wc.dataset, wc.batch, halo))

    return _digest


def source_identity(wc):
    """Param of ingest: the identity (names, sizes, modification times) of the files the source reads, so that a
    replaced or edited source file reruns ingest."""
    return ingest_source_identity(dataset_cfg(wc.dataset)["source"])


def lut_digest(wc):
    """Param of segment_relabel: a digest of the lookup-table rows of its blocks' fragments, from
    segment/lut_digests.json. segment_agglomerate (a checkpoint) writes that file; once it ran, Snakemake re-plans
    the relabel jobs and reruns those whose digest changed (and those whose fragments were recomputed)."""
    lut = PATHS.file("segment/lut_digests.json", wc.dataset)
    return digests.lut_digest(lut, WF.batch_blocks(wc.dataset, wc.batch))


def align_tables(wc):
    """Param of align_block (and predict_block with align): a digest of the transforms align_setup (a checkpoint)
    wrote, so that the blocks rerun when the transforms changed (see "Extending a dataset")."""
    return digests.file_digests([PATHS.file(f"align/{name}.parquet", wc.dataset) for name in ("sections",
                                                                                              "transforms")])


def lut_read(stage):
    """Param function: like lut_digest, over the blocks a batch reads with `stage`'s halo (the segmentation a
    skeleton block reads is their fragments through the lookup table)."""

    def _digest(wc):
        lut = PATHS.file("segment/lut_digests.json", wc.dataset)
        return digests.lut_digest(lut, WF.blocks_read(wc.dataset, wc.batch, WF.halo(stage, wc.dataset)))

    return _digest


for _name in DATASETS:
    WF.check_growth(_name)
