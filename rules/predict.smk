# predict: U-Net affinities and synapse maps, blockwise (one job per batch of blocks), from the shipped checkpoint or
# (train.enabled) from a model trained here on a ground-truth dataset (see connectomix.predict / connectomix.train).
from connectomix.predict import augment_variants, workflow_checkpoint, workflow_context, workflow_train_ground_truth

PREDICT = CFG["predict"]
TRAIN = CFG["train"]
PREDICT_CHECKPOINT = workflow_checkpoint(CFG, [d for d in DATASETS if is_phantom(d)])
PREDICT_CONTEXT = workflow_context(CFG, [d for d in DATASETS if is_phantom(d)])


rule train:
    input:
        raw=lambda wc: raw_volume_done(wc.dataset),
        init=[f"{TRAIN['init_from']}/checkpoint.json"] if TRAIN.get("init_from") else [],
        gt=lambda wc: workflow_train_ground_truth(CFG, wc.dataset, is_phantom(wc.dataset))[0],
    output:
        checkpoint=f"{RESULTS}/models/{{dataset}}/checkpoint.json",
        weights=f"{RESULTS}/models/{{dataset}}/weights.pt",
    params:
        volume=lambda wc: volume_path(wc.dataset),
        synapses=lambda wc: f"{RESULTS}/{wc.dataset}/gt/synapses.parquet",
        out=lambda wc: f"{RESULTS}/models/{wc.dataset}",
        gt=lambda wc: workflow_train_ground_truth(CFG, wc.dataset, is_phantom(wc.dataset))[1],
        spec=json_arg(TRAIN),
        device=TRAIN["device"],
        threads=TRAIN["threads"],
    log:
        f"{RESULTS}/{{dataset}}/logs/train.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=lambda wc: cmx_config.job_resources(30 * voxels(wc.dataset), CFG)["mem_mb"],
        runtime=lambda wc: max(30, cmx_config.job_resources(voxels(wc.dataset), CFG)["runtime"]),
        gpu=TRAIN["gpu"],
    shell:
        "python -m connectomix train --volume {params.volume} {params.gt} --synapses {params.synapses} --out {params.out} "
        "--params {params.spec} --device {params.device} --threads {params.threads} --no-progress > {log} 2>&1"


# The setup records what defines a block's result (checkpoint, tile shape, augmentation, block grid): its params,
# so that a change reruns it; the block rule keeps them too, so that the blocks rerun (rules/common.smk).
PREDICT_SPEC = {"checkpoint": PREDICT_CHECKPOINT, "tile_shape": PREDICT["tile_shape"], "augment": PREDICT["augment"]}
predict_work_dir = lambda wc: f"{RESULTS}/{wc.dataset}/predict"


# A checkpoint: see "Extending a dataset" in rules/common.smk.
checkpoint predict_setup:
    input:
        raw=lambda wc: raw_volume_done(wc.dataset),
        checkpoint=f"{PREDICT_CHECKPOINT}/checkpoint.json",
    output:
        setup=f"{RESULTS}/{{dataset}}/predict/setup.json",
    params:
        volume=lambda wc: volume_path(wc.dataset),
        work=predict_work_dir,
        markers=lambda wc: f"{RESULTS}/{wc.dataset}/blocks",
        spec=json_arg(PREDICT_SPEC),
        block=zyx(CFG["blocks"]["shape"]),
        chunks=zyx(CFG["storage"]["chunk_shape"]),
    log:
        f"{RESULTS}/{{dataset}}/logs/predict/setup.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=CFG["resources"]["min_mem_mb"],
        runtime=CFG["resources"]["min_runtime_min"],
    shell:
        "python -m connectomix predict setup --volume {params.volume} --work-dir {params.work} "
        "--params {params.spec} --block-shape {params.block} --chunk-shape {params.chunks} "
        "--marker-dir {params.markers} > {log} 2>&1"


rule predict_block:
    input:
        setup=setup_of("predict_setup"),
        checkpoint=f"{PREDICT_CHECKPOINT}/checkpoint.json",
    output:
        marker=f"{RESULTS}/{{dataset}}/blocks/predict/batches/{{batch}}.json",
    params:
        identity=dataset_identity,
        roi=batch_roi(PREDICT_CONTEXT),
        spec=json_arg(PREDICT_SPEC),
        work=predict_work_dir,
        blocks=batch_blocks,
        record=batch_record,
        batch=PREDICT["batch_size"],
        device=PREDICT["device"],
    log:
        f"{RESULTS}/{{dataset}}/logs/predict/{{batch}}.log",
    conda:
        ENV
    threads: PREDICT["threads"]
    resources:
        # measured: ~800 MB peak for a 40 x 284 x 284 read ROI (one tile per block, default model); batch_size
        # blocks go through the network together
        **batch_resources(PREDICT_CONTEXT, mem_factor=2 * PREDICT["batch_size"],
                          time_factor=len(augment_variants(PREDICT["augment"]))),  # passes per tile
        gpu=PREDICT["gpu"],
    shell:
        "python -m connectomix predict block --work-dir {params.work} --blocks {params.blocks} "
        "--batch-size {params.batch} --device {params.device} --threads {threads} "
        "> {log} 2>&1 && echo {params.record} > {output.marker}"


rule predict_finish:
    input:
        markers=batch_markers("predict"),
    output:
        summary=f"{RESULTS}/{{dataset}}/predict.json",
    params:
        work=predict_work_dir,
        levels=CFG["pyramid"]["levels"],
        factor=zyx(CFG["pyramid"]["factor"]),
    log:
        f"{RESULTS}/{{dataset}}/logs/predict/finish.log",
    conda:
        ENV
    threads: 1
    resources:
        **slab_resources(),
    shell:
        "python -m connectomix predict finish --work-dir {params.work} --summary {output.summary} "
        "--pyramid-levels {params.levels} --pyramid-factor {params.factor} > {log} 2>&1"


FINAL_TARGETS["predict"] = lambda name: [f"{RESULTS}/{name}/predict.json"]
