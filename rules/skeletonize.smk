# skeletonize (connectomix.blockwise: setup, block, finish): the setup and the somata of `segmentation`, once (a
# checkpoint) -> blockwise kimimaro on `segmentation`, each block clearing the somata's spheres (one job per batch
# of blocks, pieces cropped to each block's write ROI) -> one merge job (`finish`: pieces fused at block faces into
# one tree per segment: skeletons.parquet) -> morphology.parquet.
# Evaluation (phantoms): ERL and split/merge counts of the segmentation along ground-truth skeletons.

SKELETONIZE = CFG["skeletonize"]


# The stage's setup (setup.json: parameters, block grid) and the somata (whole volume, once), in one job. A
# checkpoint: which skeleton blocks must rerun depends on the somata it finds (params.somata of the blocks).
checkpoint skeletonize_somata:
    input:
        # the segmentation with its pyramid (segment_finish builds it)
        segments=PATHS.table("segments"),
    output:
        somata=PATHS.file("skeletonize/somata.parquet"),
        setup=PATHS.setup("skeletonize"),
    params:
        volume=volume_of,
        work=work_dir("skeletonize"),
        markers=marker_dir,
        spec=json_arg(SKELETONIZE),
        block=zyx(CFG["blocks"]["shape"]),
        chunks=zyx(CFG["storage"]["chunk_shape"]),
    log:
        PATHS.log("skeletonize/somata"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("skeletonize_somata"),
    shell:
        "(python -m connectomix skeletonize setup --volume {params.volume:q} --work-dir {params.work:q} "
        "--params {params.spec} --block-shape {params.block} --chunk-shape {params.chunks} "
        "--marker-dir {params.markers:q} --array segmentation "
        "&& python -m connectomix skeletonize somata --work-dir {params.work:q}) > {log:q} 2>&1"


rule skeletonize_block:
    input:
        # the relabel batches whose segmentation its blocks read (not segments.parquet, which every extension of
        # the dataset rewrites: blocks whose segmentation did not change are not rerun)
        segmentation=batches_meeting("segment_relabel", "skeletonize"),
        # behind the agglomeration checkpoint, so that these jobs are planned again once it ran: before, every
        # relabel job counts as rerunning (its lookup-table rows are not known yet)
        agglomerate=setup_of("segment_agglomerate"),
        # ancient: a block reruns when the somata reaching it change (params.somata), not for any soma; the same
        # job writes the stage's setup.json
        somata=setup_of("skeletonize_somata"),
    output:
        marker=PATHS.batch_marker("skeletonize"),
    params:
        identity=dataset_identity,
        roi=batch_roi("skeletonize"),
        # the segmentation its blocks read: the raw voxels behind its fragments, and their lookup-table rows
        raw=raw_reads("skeletonize", "segment", "predict", extra=(1, 1, 1)),
        lut=lut_read("skeletonize"),
        somata=somata_digest,
        spec=json_arg(SKELETONIZE),
        work=work_dir("skeletonize"),
        blocks=batch_blocks,
        record=batch_record,
    log:
        PATHS.log("skeletonize/{batch}"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("skeletonize_block"),
    shell:
        "python -m connectomix skeletonize block --work-dir {params.work:q} --blocks {params.blocks} "
        "--threads {threads} > {log:q} 2>&1 && echo {params.record} > {output.marker:q}"


rule skeletonize_merge:
    input:
        segments=PATHS.table("segments"),
        markers=batch_markers("skeletonize"),
        somata=PATHS.file("skeletonize/somata.parquet"),
    output:
        skeletons=PATHS.table("skeletons"),
        summary=PATHS.file("skeletonize/merge.json"),
    params:
        work=work_dir("skeletonize"),
        spec=json_arg(SKELETONIZE),
    log:
        PATHS.log("skeletonize/merge"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("skeletonize_merge"),
    shell:
        "python -m connectomix skeletonize finish --work-dir {params.work:q} --segments {input.segments:q} "
        "--skeletons {output.skeletons:q} --summary {output.summary:q} > {log:q} 2>&1"


rule skeletonize_morphology:
    input:
        skeletons=PATHS.table("skeletons"),
    output:
        morphology=PATHS.table("morphology"),
        summary=PATHS.file("skeletonize/morphology.json"),
    params:
        spec=json_arg(SKELETONIZE),
        # somata are measured as bodies on the segmentation (read around each soma; skeletons come after it)
        volume=volume_of,
    log:
        PATHS.log("skeletonize/morphology"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("skeletonize_morphology"),
    shell:
        "python -m connectomix skeletonize morphology --skeletons {input.skeletons:q} --params {params.spec} "
        "--volume {params.volume:q} --array segmentation "
        "--out {output.morphology:q} --summary {output.summary:q} > {log:q} 2>&1"


rule evaluate_skeletons:
    wildcard_constraints:
        dataset=datasets_in("phantom"),
    input:
        segments=PATHS.table("segments"),
        gt=PATHS.phantom_summary(),
    output:
        metrics=PATHS.eval("skeletons"),
    params:
        volume=volume_of,
        objects=lambda wc: PATHS.gt("objects.parquet", wc.dataset),
        spec=json_arg(SKELETONIZE),
    log:
        PATHS.log("evaluate/skeletons"),
    conda:
        ENV
    threads: 2
    resources:
        **resources_of("evaluate_skeletons"),
    shell:
        "python -m connectomix evaluate skeletons --volume {params.volume:q} --seg-array segmentation "
        "--gt-array gt/labels --objects {params.objects:q} --params {params.spec} --threads {threads} "
        "--dataset {wildcards.dataset:q} --out {output.metrics:q} > {log:q} 2>&1"
