# segment: affinities -> fragments (per block) -> RAG edges (per block) -> global agglomeration -> segmentation
# (per block) -> segments.parquet + pyramid. Block ids are those of block_grid(); blockwise steps run one job per
# batch of blocks (block_batches); block markers under blocks/{stage}/, batch markers under blocks/{stage}/batches/.

SEGMENT = CFG["segment"]
segment_work_dir = lambda wc: f"{RESULTS}/{wc.dataset}/segment"
# resources from the voxels a block reads (its read ROI)
segment_block_resources = batch_resources(SEGMENT["halo"])


# A checkpoint: see "Extending a dataset" in rules/common.smk. It needs the affinities array, not the predictions.
checkpoint segment_setup:
    input:
        predict=f"{RESULTS}/{{dataset}}/predict/setup.json",
    output:
        setup=f"{RESULTS}/{{dataset}}/segment/setup.json",
    params:
        work=segment_work_dir,
        volume=volume_of,
        markers=lambda wc: f"{RESULTS}/{wc.dataset}/blocks",
        seg=json_arg(SEGMENT),
        block=zyx(CFG["blocks"]["shape"]),
        chunks=zyx(CFG["storage"]["chunk_shape"]),
    log:
        f"{RESULTS}/{{dataset}}/logs/segment/setup.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=CFG["resources"]["min_mem_mb"],
        runtime=CFG["resources"]["min_runtime_min"],
    shell:
        "python -m connectomix segment setup --volume {params.volume} --work-dir {params.work} "
        "--params {params.seg} --block-shape {params.block} --chunk-shape {params.chunks} "
        "--marker-dir {params.markers} > {log} 2>&1"


rule segment_fragments:
    input:
        setup=setup_of("segment_setup"),
        # the predict batches whose affinities its blocks read
        affinities=batches_meeting("predict", SEGMENT["halo"]),
    output:
        marker=f"{RESULTS}/{{dataset}}/blocks/segment_fragments/batches/{{batch}}.json",
    params:
        identity=dataset_identity,
        roi=batch_roi(SEGMENT["halo"]),
        seg=json_arg(SEGMENT),
        work=segment_work_dir,
        blocks=batch_blocks,
        record=batch_record,
    log:
        f"{RESULTS}/{{dataset}}/logs/segment/fragments/{{batch}}.log",
    conda:
        ENV
    threads: 1
    resources:
        **segment_block_resources,
    shell:
        "python -m connectomix segment block --step fragments --work-dir {params.work} --blocks {params.blocks} "
        "> {log} 2>&1 "
        "&& echo {params.record} > {output.marker}"


rule segment_rag:
    input:
        # the fragments of its blocks and of the blocks just below them (in this batch or the ones below it)
        fragments=lambda wc: [
            f"{RESULTS}/{wc.dataset}/blocks/segment_fragments/batches/{b}.json"
            for b in block_batches(wc.dataset).lower_neighbours(wc.batch)
        ],
    output:
        marker=f"{RESULTS}/{{dataset}}/blocks/segment_rag/batches/{{batch}}.json",
    params:
        identity=dataset_identity,
        roi=batch_roi(),
        work=segment_work_dir,
        blocks=batch_blocks,
        record=batch_record,
    log:
        f"{RESULTS}/{{dataset}}/logs/segment/rag/{{batch}}.log",
    conda:
        ENV
    threads: 1
    resources:
        **segment_block_resources,
    shell:
        "python -m connectomix segment block --step rag --work-dir {params.work} --blocks {params.blocks} "
        "> {log} 2>&1 "
        "&& echo {params.record} > {output.marker}"


# A checkpoint: which relabel batches must rerun depends on the lookup table it writes (lut_digest).
checkpoint segment_agglomerate:
    input:
        rag=batch_markers("segment_rag"),
    output:
        summary=f"{RESULTS}/{{dataset}}/segment/agglomerate.json",
    params:
        work=segment_work_dir,
    log:
        f"{RESULTS}/{{dataset}}/logs/segment/agglomerate.log",
    conda:
        ENV
    threads: 1
    resources:
        # the graph holds a few edges per fragment; fragments are a small fraction of the voxels
        mem_mb=lambda wc: cmx_config.job_resources(voxels(wc.dataset) // 4, CFG)["mem_mb"],
        runtime=lambda wc: cmx_config.job_resources(voxels(wc.dataset) // 4, CFG)["runtime"],
    shell:
        "python -m connectomix segment agglomerate --work-dir {params.work} > {log} 2>&1"


rule segment_relabel:
    input:
        # ancient: after the checkpoint ran, a batch reruns when its lookup-table rows changed (params.lut) or its
        # fragments were recomputed; a dry run cannot know the rows yet and lists every batch
        agglomerate=lambda wc: ancient(checkpoints.segment_agglomerate.get(dataset=wc.dataset).output.summary),
        fragments=f"{RESULTS}/{{dataset}}/blocks/segment_fragments/batches/{{batch}}.json",
    output:
        marker=f"{RESULTS}/{{dataset}}/blocks/segment_relabel/batches/{{batch}}.json",
    params:
        identity=dataset_identity,
        lut=lut_digest,
        work=segment_work_dir,
        blocks=batch_blocks,
        record=batch_record,
    log:
        f"{RESULTS}/{{dataset}}/logs/segment/relabel/{{batch}}.log",
    conda:
        ENV
    threads: 1
    resources:
        **segment_block_resources,
    shell:
        "python -m connectomix segment block --step relabel --work-dir {params.work} --blocks {params.blocks} "
        "> {log} 2>&1 "
        "&& echo {params.record} > {output.marker}"


rule segment_finish:
    input:
        relabel=batch_markers("segment_relabel"),
        # the affinities' checksum (provenance) is set by predict_finish
        predict=f"{RESULTS}/{{dataset}}/predict.json",
    output:
        segments=f"{RESULTS}/{{dataset}}/segments.parquet",
        summary=f"{RESULTS}/{{dataset}}/segment.json",
    params:
        work=segment_work_dir,
        levels=CFG["pyramid"]["levels"],
        factor=zyx(CFG["pyramid"]["factor"]),
    log:
        f"{RESULTS}/{{dataset}}/logs/segment/finish.log",
    conda:
        ENV
    threads: 2
    resources:
        **slab_resources(),
    shell:
        "python -m connectomix segment finish --work-dir {params.work} --segments {output.segments} "
        "--summary {output.summary} --pyramid-levels {params.levels} --pyramid-factor {params.factor} > {log} 2>&1"


FINAL_TARGETS["segment"] = lambda name: [f"{RESULTS}/{name}/segment.json", f"{RESULTS}/{name}/segments.parquet"]
