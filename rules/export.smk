# export: the segmentation as Neuroglancer precomputed (with its skeletons; the mesh stage adds meshes), SWC files
# per segment, annotation layers (synapses, somata, two-photon matches) with segment properties, and a Neuroglancer
# state JSON.

EXPORT = CFG["export"]
PRECOMPUTED = PATHS.file("precomputed/segmentation")


rule export_precomputed_segmentation:
    input:
        segments=PATHS.table("segments"),
    output:
        info=f"{PRECOMPUTED}/info",
    params:
        volume=volume_of,
        out=lambda wc: PATHS.file("precomputed/segmentation", wc.dataset),
        encoding=EXPORT["segmentation_encoding"],
    log:
        PATHS.log("export/precomputed_segmentation"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("export_precomputed_segmentation"),
    shell:
        "python -m connectomix export neuroglancer --volume {params.volume:q} --array segmentation "
        "--precomputed {params.out:q} --encoding {params.encoding:q} > {log:q} 2>&1"


rule export_skeletons:
    input:
        skeletons=PATHS.table("skeletons"),
        info=f"{PRECOMPUTED}/info",
    output:
        summary=PATHS.file("skeletons/export.json"),
    params:
        swc=lambda wc: PATHS.file("skeletons/swc", wc.dataset),
        precomputed=lambda wc: PATHS.file("precomputed/segmentation", wc.dataset),
        spec=json_arg(CFG["skeletonize"]),
    log:
        PATHS.log("export/skeletons"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("export_skeletons"),
    shell:
        "python -m connectomix export skeletons --skeletons {input.skeletons:q} --params {params.spec} "
        "--swc-dir {params.swc:q} --precomputed {params.precomputed:q} --summary {output.summary:q} > {log:q} 2>&1"


rule export_annotations:
    input:
        unpack(annotation_inputs),
        synapses=PATHS.table("synapses"),
        neurons=PATHS.table("neurons"),
        info=f"{PRECOMPUTED}/info",
    output:
        summary=PATHS.file("precomputed/annotations.json"),
    params:
        precomputed=lambda wc: PATHS.file("precomputed", wc.dataset),
        extras=annotation_args,
    log:
        PATHS.log("export/annotations"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("export_annotations"),
    shell:
        "python -m connectomix export annotations --precomputed {params.precomputed:q} --synapses {input.synapses:q} "
        "--neurons {input.neurons:q} {params.extras} --summary {output.summary:q} > {log:q} 2>&1"


rule export_neuroglancer_state:
    input:
        info=f"{PRECOMPUTED}/info",
        skeletons=PATHS.file("skeletons/export.json"),
        meshes=PATHS.file("mesh/summary.json"),
        annotations=PATHS.file("precomputed/annotations.json"),
        morphology=PATHS.table("morphology"),
    output:
        state=PATHS.file("neuroglancer.json"),
    params:
        volume=volume_of,
        base_url=lambda wc: EXPORT["neuroglancer_base_url"].replace("{dataset}", wc.dataset),
        top=EXPORT["selected_segments"],
    log:
        PATHS.log("export/neuroglancer_state"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("export_neuroglancer_state"),
    shell:
        "python -m connectomix export neuroglancer --volume {params.volume:q} --array segmentation "
        "--state {output.state:q} --base-url {params.base_url:q} --morphology {input.morphology:q} "
        "--top {params.top} > {log:q} 2>&1"
