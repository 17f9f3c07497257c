# segment: affinities -> fragments (per block) -> RAG edges (per block) -> global agglomeration -> segmentation
# (per block) -> segments.parquet + pyramid. Block ids are those of block_grid(); markers under blocks/{stage}/.
from connectomix.segment.workflow import lower_neighbours

SEGMENT = CFG["segment"]
segment_grid = lambda name: block_grid(name, SEGMENT["halo"])
segment_blocks = lambda name: segment_grid(name).ids()
segment_work_dir = lambda wc: f"{RESULTS}/{wc.dataset}/segment"
# resources from the voxels a block job reads (its read ROI)
segment_block_resources = {
    "mem_mb": lambda wc: cmx_config.job_resources(segment_grid(wc.dataset).block(wc.block).read.size, CFG)["mem_mb"],
    "runtime": lambda wc: cmx_config.job_resources(segment_grid(wc.dataset).block(wc.block).read.size, CFG)["runtime"],
}


rule segment_setup:
    input:
        predict=f"{RESULTS}/{{dataset}}/predict.json",
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
        setup=f"{RESULTS}/{{dataset}}/segment/setup.json",
    output:
        marker=f"{RESULTS}/{{dataset}}/blocks/segment_fragments/{{block}}.json",
    params:
        work=segment_work_dir,
    log:
        f"{RESULTS}/{{dataset}}/logs/segment/fragments/{{block}}.log",
    conda:
        ENV
    threads: 1
    resources:
        **segment_block_resources,
    shell:
        "python -m connectomix segment fragments --work-dir {params.work} --blocks {wildcards.block} > {log} 2>&1"


rule segment_rag:
    input:
        fragments=lambda wc: [
            f"{RESULTS}/{wc.dataset}/blocks/segment_fragments/{b}.json" for b in lower_neighbours(wc.block)
        ],
    output:
        marker=f"{RESULTS}/{{dataset}}/blocks/segment_rag/{{block}}.json",
    params:
        work=segment_work_dir,
    log:
        f"{RESULTS}/{{dataset}}/logs/segment/rag/{{block}}.log",
    conda:
        ENV
    threads: 1
    resources:
        **segment_block_resources,
    shell:
        "python -m connectomix segment rag --work-dir {params.work} --blocks {wildcards.block} > {log} 2>&1"


rule segment_agglomerate:
    input:
        rag=lambda wc: [f"{RESULTS}/{wc.dataset}/blocks/segment_rag/{b}.json" for b in segment_blocks(wc.dataset)],
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
        agglomerate=f"{RESULTS}/{{dataset}}/segment/agglomerate.json",
    output:
        marker=f"{RESULTS}/{{dataset}}/blocks/segment_relabel/{{block}}.json",
    params:
        work=segment_work_dir,
    log:
        f"{RESULTS}/{{dataset}}/logs/segment/relabel/{{block}}.log",
    conda:
        ENV
    threads: 1
    resources:
        **segment_block_resources,
    shell:
        "python -m connectomix segment relabel --work-dir {params.work} --blocks {wildcards.block} > {log} 2>&1"


rule segment_finish:
    input:
        relabel=lambda wc: [
            f"{RESULTS}/{wc.dataset}/blocks/segment_relabel/{b}.json" for b in segment_blocks(wc.dataset)
        ],
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
