# skeletonize (connectomix.blockwise: setup, block, finish): the setup and the somata of `segmentation`, once (a
# checkpoint) -> blockwise kimimaro on `segmentation`, each block clearing the somata's spheres (one job per batch
# of blocks, pieces cropped to each block's write ROI) -> one merge job (`finish`: pieces fused at block faces into
# one tree per segment: skeletons.parquet) -> morphology.parquet.
# Evaluation (phantoms): ERL and split/merge counts of the segmentation along ground-truth skeletons.

SKELETONIZE = CFG["skeletonize"]
skeletonize_work_dir = lambda wc: f"{RESULTS}/{wc.dataset}/skeletonize"


FINAL_TARGETS["skeletonize"] = lambda name: [
    f"{RESULTS}/{name}/skeletons.parquet",
    f"{RESULTS}/{name}/morphology.parquet",
]
EVAL_TARGETS["skeletons"] = lambda name: [f"{RESULTS}/{name}/eval/skeletons.json"] if is_phantom(name) else []


# The stage's setup (setup.json: parameters, block grid) and the somata (whole volume, once), in one job. A
# checkpoint: which skeleton blocks must rerun depends on the somata it finds (params.somata of the blocks).
checkpoint skeletonize_somata:
    input:
        # the segmentation with its pyramid (segment_finish builds it)
        segments=f"{RESULTS}/{{dataset}}/segments.parquet",
    output:
        somata=f"{RESULTS}/{{dataset}}/skeletonize/somata.parquet",
        setup=f"{RESULTS}/{{dataset}}/skeletonize/setup.json",
    params:
        volume=volume_of,
        work=skeletonize_work_dir,
        markers=lambda wc: f"{RESULTS}/{wc.dataset}/blocks",
        spec=json_arg(SKELETONIZE),
        block=zyx(CFG["blocks"]["shape"]),
        chunks=zyx(CFG["storage"]["chunk_shape"]),
    log:
        f"{RESULTS}/{{dataset}}/logs/skeletonize/somata.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=CFG["resources"]["min_mem_mb"],
        runtime=CFG["resources"]["min_runtime_min"],
    shell:
        "(python -m connectomix skeletonize setup --volume {params.volume} --work-dir {params.work} "
        "--params {params.spec} --block-shape {params.block} --chunk-shape {params.chunks} "
        "--marker-dir {params.markers} --array segmentation "
        "&& python -m connectomix skeletonize somata --work-dir {params.work}) > {log} 2>&1"


rule skeletonize_block:
    input:
        # the relabel batches whose segmentation its blocks read (not segments.parquet, which every extension of
        # the dataset rewrites: blocks whose segmentation did not change are not rerun)
        segmentation=batches_meeting("segment_relabel", SKELETONIZE["halo"]),
        # behind the agglomeration checkpoint, so that these jobs are planned again once it ran: before, every
        # relabel job counts as rerunning (its lookup-table rows are not known yet)
        agglomerate=setup_of("segment_agglomerate"),
        # ancient: a block reruns when the somata reaching it change (params.somata), not for any soma; the same
        # job writes the stage's setup.json
        somata=setup_of("skeletonize_somata"),
    output:
        marker=f"{RESULTS}/{{dataset}}/blocks/skeletonize/batches/{{batch}}.json",
    params:
        identity=dataset_identity,
        roi=batch_roi(SKELETONIZE["halo"]),
        somata=somata_digest,
        spec=json_arg(SKELETONIZE),
        work=skeletonize_work_dir,
        blocks=batch_blocks,
        record=batch_record,
    log:
        f"{RESULTS}/{{dataset}}/logs/skeletonize/{{batch}}.log",
    conda:
        ENV
    threads: 1
    resources:
        # from the voxels each block reads (its read ROI)
        **batch_resources(SKELETONIZE["halo"], mem_factor=12, time_factor=4),
    shell:
        "python -m connectomix skeletonize block --work-dir {params.work} --blocks {params.blocks} "
        "--threads {threads} > {log} 2>&1 && echo {params.record} > {output.marker}"


rule skeletonize_merge:
    input:
        segments=f"{RESULTS}/{{dataset}}/segments.parquet",
        markers=batch_markers("skeletonize"),
        somata=f"{RESULTS}/{{dataset}}/skeletonize/somata.parquet",
    output:
        skeletons=f"{RESULTS}/{{dataset}}/skeletons.parquet",
        summary=f"{RESULTS}/{{dataset}}/skeletonize/merge.json",
    params:
        work=skeletonize_work_dir,
        spec=json_arg(SKELETONIZE),
    log:
        f"{RESULTS}/{{dataset}}/logs/skeletonize/merge.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=lambda wc: cmx_config.job_resources(voxels(wc.dataset), CFG)["mem_mb"],
        runtime=lambda wc: cmx_config.job_resources(voxels(wc.dataset), CFG)["runtime"],
    shell:
        "python -m connectomix skeletonize finish --work-dir {params.work} --segments {input.segments} "
        "--skeletons {output.skeletons} --summary {output.summary} > {log} 2>&1"


rule skeletonize_morphology:
    input:
        skeletons=f"{RESULTS}/{{dataset}}/skeletons.parquet",
    output:
        morphology=f"{RESULTS}/{{dataset}}/morphology.parquet",
        summary=f"{RESULTS}/{{dataset}}/skeletonize/morphology.json",
    params:
        spec=json_arg(SKELETONIZE),
        # somata are measured as bodies on the segmentation (read around each soma; skeletons come after it)
        volume=volume_of,
    log:
        f"{RESULTS}/{{dataset}}/logs/skeletonize/morphology.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=CFG["resources"]["min_mem_mb"],
        runtime=CFG["resources"]["min_runtime_min"],
    shell:
        "python -m connectomix skeletonize morphology --skeletons {input.skeletons} --params {params.spec} "
        "--volume {params.volume} --array segmentation "
        "--out {output.morphology} --summary {output.summary} > {log} 2>&1"


rule evaluate_skeletons:
    wildcard_constraints:
        dataset="|".join(PHANTOM_DATASETS),
    input:
        segments=f"{RESULTS}/{{dataset}}/segments.parquet",
        gt=f"{RESULTS}/{{dataset}}/gt/phantom.json",
    output:
        metrics=f"{RESULTS}/{{dataset}}/eval/skeletons.json",
    params:
        volume=volume_of,
        objects=lambda wc: f"{RESULTS}/{wc.dataset}/gt/objects.parquet",
        spec=json_arg(SKELETONIZE),
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate/skeletons.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=lambda wc: cmx_config.job_resources(24 * voxels(wc.dataset), CFG)["mem_mb"],
        runtime=lambda wc: cmx_config.job_resources(4 * voxels(wc.dataset), CFG)["runtime"],
    shell:
        "python -m connectomix evaluate skeletons --volume {params.volume} --seg-array segmentation "
        "--gt-array gt/labels --objects {params.objects} --params {params.spec} --threads {threads} "
        "--dataset {wildcards.dataset} --out {output.metrics} > {log} 2>&1"
