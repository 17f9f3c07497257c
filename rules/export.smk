# export: the segmentation as Neuroglancer precomputed (with its skeletons), SWC files per segment, and a
# Neuroglancer state JSON (image + segmentation + skeleton layers).

EXPORT = CFG["export"]


FINAL_TARGETS["export_skeletons"] = lambda name: [
    f"{RESULTS}/{name}/neuroglancer.json",
    f"{RESULTS}/{name}/skeletons/export.json",
]


rule export_precomputed_segmentation:
    input:
        segments=f"{RESULTS}/{{dataset}}/segments.parquet",
    output:
        info=f"{RESULTS}/{{dataset}}/precomputed/segmentation/info",
    params:
        volume=volume_of,
        out=lambda wc: f"{RESULTS}/{wc.dataset}/precomputed/segmentation",
        encoding=EXPORT["segmentation_encoding"],
    log:
        f"{RESULTS}/{{dataset}}/logs/export/precomputed_segmentation.log",
    conda:
        ENV
    threads: 1
    resources:
        **slab_resources(),
    shell:
        "python -m connectomix export neuroglancer --volume {params.volume} --array segmentation "
        "--precomputed {params.out} --encoding {params.encoding} > {log} 2>&1"


rule export_skeletons:
    input:
        skeletons=f"{RESULTS}/{{dataset}}/skeletons.parquet",
        info=f"{RESULTS}/{{dataset}}/precomputed/segmentation/info",
    output:
        summary=f"{RESULTS}/{{dataset}}/skeletons/export.json",
    params:
        swc=lambda wc: f"{RESULTS}/{wc.dataset}/skeletons/swc",
        precomputed=lambda wc: f"{RESULTS}/{wc.dataset}/precomputed/segmentation",
        spec=json_arg(CFG["skeletonize"]),
    log:
        f"{RESULTS}/{{dataset}}/logs/export/skeletons.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=CFG["resources"]["min_mem_mb"],
        runtime=CFG["resources"]["min_runtime_min"],
    shell:
        "python -m connectomix export skeletons --skeletons {input.skeletons} --params {params.spec} "
        "--swc-dir {params.swc} --precomputed {params.precomputed} --summary {output.summary} > {log} 2>&1"


rule export_neuroglancer_state:
    input:
        info=f"{RESULTS}/{{dataset}}/precomputed/segmentation/info",
        skeletons=f"{RESULTS}/{{dataset}}/skeletons/export.json",
        morphology=f"{RESULTS}/{{dataset}}/morphology.parquet",
    output:
        state=f"{RESULTS}/{{dataset}}/neuroglancer.json",
    params:
        volume=volume_of,
        base_url=lambda wc: EXPORT["neuroglancer_base_url"].replace("{dataset}", wc.dataset),
        top=EXPORT["selected_segments"],
    log:
        f"{RESULTS}/{{dataset}}/logs/export/neuroglancer_state.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=CFG["resources"]["min_mem_mb"],
        runtime=CFG["resources"]["min_runtime_min"],
    shell:
        "python -m connectomix export neuroglancer --volume {params.volume} --array segmentation "
        "--state {output.state} --base-url {params.base_url} --morphology {input.morphology} "
        "--top {params.top} > {log} 2>&1"
