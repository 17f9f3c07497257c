# segment: affinities -> fragments (per block) -> RAG edges (per block) -> global agglomeration -> segmentation
# (per block) -> segments.parquet + pyramid. Blockwise steps run one job per batch of blocks (WF.batches); block
# markers under blocks/{stage}/, batch markers under blocks/{stage}/batches/.
# Evaluation: phantoms (gt/labels) and datasets listed in segment.evaluation.ground_truth.

SEGMENT = CFG["segment"]
# method 'learned': the edge classifier (the setup checks it and copies it into the stage folder)
EDGE_MODEL = [SEGMENT["agglomerate"]["edge_model"]] if SEGMENT["agglomerate"]["method"] == "learned" else []


# A checkpoint: see "Extending a dataset" in rules/common.smk. It needs the affinities array, not the predictions.
checkpoint segment_setup:
    input:
        predict=PATHS.setup("predict"),
        edge_model=EDGE_MODEL,
    output:
        setup=PATHS.setup("segment"),
    params:
        work=work_dir("segment"),
        volume=volume_of,
        markers=marker_dir,
        seg=json_arg(SEGMENT),
        block=zyx(CFG["blocks"]["shape"]),
        chunks=zyx(CFG["storage"]["chunk_shape"]),
    log:
        PATHS.log("segment/setup"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("segment_setup"),
    shell:
        "python -m connectomix segment setup --volume {params.volume:q} --work-dir {params.work:q} "
        "--params {params.seg} --block-shape {params.block} --chunk-shape {params.chunks} "
        "--marker-dir {params.markers:q} > {log:q} 2>&1"


rule segment_fragments:
    input:
        setup=setup_of("segment_setup"),
        # the predict batches whose affinities its blocks read
        affinities=batches_meeting("predict", "segment"),
    output:
        marker=PATHS.batch_marker("segment_fragments"),
    params:
        identity=dataset_identity,
        roi=batch_roi("segment"),
        # the raw voxels behind the affinities its blocks read
        raw=raw_reads("segment", "predict"),
        seg=json_arg(SEGMENT),
        work=work_dir("segment"),
        blocks=batch_blocks,
        record=batch_record,
    log:
        PATHS.log("segment/fragments/{batch}"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("segment_fragments"),
    shell:
        "python -m connectomix segment block --step fragments --work-dir {params.work:q} --blocks {params.blocks} "
        "> {log:q} 2>&1 "
        "&& echo {params.record} > {output.marker:q}"


rule segment_rag:
    input:
        # the fragments of its blocks and of the blocks just below them (in this batch or the ones below it)
        fragments=lambda wc: WF.batch_markers(
            wc.dataset, "segment_fragments", WF.batches(wc.dataset).lower_neighbours(wc.batch)
        ),
    output:
        marker=PATHS.batch_marker("segment_rag"),
    params:
        identity=dataset_identity,
        roi=batch_roi(),
        work=work_dir("segment"),
        blocks=batch_blocks,
        record=batch_record,
    log:
        PATHS.log("segment/rag/{batch}"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("segment_rag"),
    shell:
        "python -m connectomix segment block --step rag --work-dir {params.work:q} --blocks {params.blocks} "
        "> {log:q} 2>&1 "
        "&& echo {params.record} > {output.marker:q}"


# A checkpoint: which relabel batches must rerun depends on the lookup table it writes (lut_digest).
checkpoint segment_agglomerate:
    input:
        rag=batch_markers("segment_rag"),
        # not ancient: a new edge model reruns the setup (which copies it) and then this
        setup=PATHS.setup("segment"),
    output:
        summary=PATHS.file("segment/agglomerate.json"),
    params:
        work=work_dir("segment"),
    log:
        PATHS.log("segment/agglomerate"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("segment_agglomerate"),
    shell:
        "python -m connectomix segment agglomerate --work-dir {params.work:q} > {log:q} 2>&1"


rule segment_relabel:
    input:
        # ancient: after the checkpoint ran, a batch reruns when its lookup-table rows changed (params.lut) or its
        # fragments were recomputed; a dry run cannot know the rows yet and lists every batch
        agglomerate=lambda wc: ancient(checkpoints.segment_agglomerate.get(dataset=wc.dataset).output.summary),
        fragments=PATHS.batch_marker("segment_fragments"),
    output:
        marker=PATHS.batch_marker("segment_relabel"),
    params:
        identity=dataset_identity,
        lut=lut_digest,
        work=work_dir("segment"),
        blocks=batch_blocks,
        record=batch_record,
    log:
        PATHS.log("segment/relabel/{batch}"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("segment_relabel"),
    shell:
        "python -m connectomix segment block --step relabel --work-dir {params.work:q} --blocks {params.blocks} "
        "> {log:q} 2>&1 "
        "&& echo {params.record} > {output.marker:q}"


rule segment_finish:
    input:
        relabel=batch_markers("segment_relabel"),
        # the affinities' checksum (provenance) is set by predict_finish
        predict=PATHS.summary("predict"),
    output:
        segments=PATHS.table("segments"),
        summary=PATHS.summary("segment"),
    params:
        work=work_dir("segment"),
        levels=CFG["pyramid"]["levels"],
        factor=zyx(CFG["pyramid"]["factor"]),
    log:
        PATHS.log("segment/finish"),
    conda:
        ENV
    threads: 2
    resources:
        **resources_of("segment_finish"),
    shell:
        "python -m connectomix segment finish --work-dir {params.work:q} --segments {output.segments:q} "
        "--summary {output.summary:q} --pyramid-levels {params.levels} --pyramid-factor {params.factor} "
        "> {log:q} 2>&1"


rule evaluate_segmentation:
    wildcard_constraints:
        dataset=datasets_in("segment_eval"),
    input:
        segment=PATHS.summary("segment"),
        gt=gt_files("segmentation"),
    output:
        metrics=PATHS.eval("segmentation"),
        plot=report(
            PATHS.file("eval/segmentation_sweep.png"),
            caption="../report/segmentation_sweep.rst",
            category="Accuracy",
            subcategory="{dataset}",
        ),
    params:
        gt=gt_args("segmentation"),
        volume=volume_of,
        work=work_dir("segment"),
    log:
        PATHS.log("evaluate/segmentation"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("evaluate_segmentation"),
    shell:
        "python -m connectomix evaluate segmentation --volume {params.volume:q} --work-dir {params.work:q} "
        "{params.gt} --out {output.metrics:q} --plot {output.plot:q} --dataset {wildcards.dataset:q} > {log:q} 2>&1"
