# predict: U-Net affinities and synapse maps, blockwise (one job per batch of blocks), from the shipped checkpoint or
# (train.enabled) from a model trained here on a ground-truth dataset (see connectomix.predict / connectomix.train).

PREDICT = CFG["predict"]
TRAIN = CFG["train"]
PREDICT_CHECKPOINT = WF.checkpoint_dir()


rule train:
    input:
        raw=raw_done,
        init=[f"{TRAIN['init_from']}/checkpoint.json"] if TRAIN.get("init_from") else [],
        gt=gt_files("train"),
    output:
        checkpoint=f"{PATHS.model_dir()}/checkpoint.json",
        weights=f"{PATHS.model_dir()}/weights.pt",
    params:
        volume=volume_of,
        synapses=lambda wc: PATHS.gt("synapses.parquet", wc.dataset),
        out=lambda wc: PATHS.model_dir(wc.dataset),
        gt=gt_args("train"),
        spec=json_arg(TRAIN),
        device=TRAIN["device"],
        threads=TRAIN["threads"],
    log:
        PATHS.log("train"),
    conda:
        ENV
    threads: 2
    resources:
        **resources_of("train"),
        gpu=TRAIN["gpu"],
    shell:
        "python -m connectomix train --volume {params.volume:q} {params.gt} --synapses {params.synapses:q} "
        "--out {params.out:q} --params {params.spec} --device {params.device:q} --threads {params.threads} "
        "--no-progress > {log:q} 2>&1"


# The setup records what defines a block's result (checkpoint, tile shape, augmentation, block grid): its params,
# so that a change reruns it; the block rule keeps them too, so that the blocks rerun (rules/common.smk).
PREDICT_SPEC = {"checkpoint": PREDICT_CHECKPOINT, "tile_shape": PREDICT["tile_shape"], "augment": PREDICT["augment"]}
# The image predict reads: `raw`, or `aligned` (align.enabled) with the z-affinities at missing sections per
# align.missing_affinities; the block rule keeps it as a param too.
PREDICT_INPUT = (f"--input aligned --missing-affinities {CFG['align']['missing_affinities']}"
                 if CFG["align"]["enabled"] else "")


# A checkpoint: see "Extending a dataset" in rules/common.smk.
checkpoint predict_setup:
    input:
        raw=raw_done,
        # with align.enabled, predict reads `aligned` (rules/align.smk)
        aligned=[PATHS.summary("align")] if CFG["align"]["enabled"] else [],
        checkpoint=f"{PREDICT_CHECKPOINT}/checkpoint.json",
    output:
        setup=PATHS.setup("predict"),
    params:
        volume=volume_of,
        work=work_dir("predict"),
        markers=marker_dir,
        spec=json_arg(PREDICT_SPEC),
        block=zyx(CFG["blocks"]["shape"]),
        chunks=zyx(CFG["storage"]["chunk_shape"]),
        input=PREDICT_INPUT,
    log:
        PATHS.log("predict/setup"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("predict_setup"),
    shell:
        "python -m connectomix predict setup --volume {params.volume:q} --work-dir {params.work:q} "
        "--params {params.spec} --block-shape {params.block} --chunk-shape {params.chunks} "
        "--marker-dir {params.markers:q} {params.input} > {log:q} 2>&1"


rule predict_block:
    input:
        setup=setup_of("predict_setup"),
        checkpoint=f"{PREDICT_CHECKPOINT}/checkpoint.json",
    output:
        marker=PATHS.batch_marker("predict"),
    params:
        identity=dataset_identity,
        roi=batch_roi("predict"),
        # the raw voxels its blocks read (ingest's block digests): a changed source reruns only those blocks
        raw=raw_reads("predict"),
        spec=json_arg(PREDICT_SPEC),
        input=PREDICT_INPUT,
        # with align: the transforms behind `aligned` (a changed alignment reruns every block)
        align=lambda wc: align_tables(wc) if CFG["align"]["enabled"] else "",
        work=work_dir("predict"),
        blocks=batch_blocks,
        record=batch_record,
        batch=PREDICT["batch_size"],
        device=PREDICT["device"],
    log:
        PATHS.log("predict/{batch}"),
    conda:
        ENV
    threads: PREDICT["threads"]
    resources:
        **resources_of("predict_block"),
        gpu=PREDICT["gpu"],
    shell:
        "python -m connectomix predict block --work-dir {params.work:q} --blocks {params.blocks} "
        "--batch-size {params.batch} --device {params.device:q} --threads {threads} "
        "> {log:q} 2>&1 && echo {params.record} > {output.marker:q}"


rule predict_finish:
    input:
        markers=batch_markers("predict"),
    output:
        summary=PATHS.summary("predict"),
    params:
        work=work_dir("predict"),
        levels=CFG["pyramid"]["levels"],
        factor=zyx(CFG["pyramid"]["factor"]),
    log:
        PATHS.log("predict/finish"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("predict_finish"),
    shell:
        "python -m connectomix predict finish --work-dir {params.work:q} --summary {output.summary:q} "
        "--pyramid-levels {params.levels} --pyramid-factor {params.factor} > {log:q} 2>&1"
