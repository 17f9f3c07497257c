# mesh (connectomix.blockwise: setup, block, finish): the setup, once (a checkpoint) -> zmesh marching cubes per
# block of `segmentation` (one job per batch of blocks; each block meshes its write ROI plus one voxel on its high
# sides) -> one merge job (`finish`: pieces welded per segment, simplified, written as Neuroglancer precomputed
# legacy meshes into precomputed/segmentation/mesh, which the segmentation's info names) -> a report figure of a
# few neurons' meshes with their synapses.

MESH = CFG["mesh"]


# A checkpoint: see "Extending a dataset" in rules/common.smk.
checkpoint mesh_setup:
    input:
        # the segmentation with its pyramid (segment_finish builds it)
        segments=PATHS.table("segments"),
    output:
        setup=PATHS.setup("mesh"),
    params:
        volume=volume_of,
        work=work_dir("mesh"),
        markers=marker_dir,
        spec=json_arg(MESH),
        block=zyx(CFG["blocks"]["shape"]),
        chunks=zyx(CFG["storage"]["chunk_shape"]),
    log:
        PATHS.log("mesh/setup"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("mesh_setup"),
    shell:
        "python -m connectomix mesh setup --volume {params.volume:q} --work-dir {params.work:q} "
        "--params {params.spec} --block-shape {params.block} --chunk-shape {params.chunks} "
        "--marker-dir {params.markers:q} --array segmentation > {log:q} 2>&1"


rule mesh_block:
    input:
        # the relabel batches whose segmentation its blocks read (as skeletonize_block)
        segmentation=batches_meeting("segment_relabel", "mesh"),
        agglomerate=setup_of("segment_agglomerate"),
        setup=setup_of("mesh_setup"),
    output:
        marker=PATHS.batch_marker("mesh"),
    params:
        identity=dataset_identity,
        roi=batch_roi("mesh"),
        raw=raw_reads("mesh", "segment", "predict", extra=(1, 1, 1)),
        lut=lut_read("mesh"),
        spec=json_arg(MESH),
        work=work_dir("mesh"),
        blocks=batch_blocks,
        record=batch_record,
    log:
        PATHS.log("mesh/{batch}"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("mesh_block"),
    shell:
        "python -m connectomix mesh block --work-dir {params.work:q} --blocks {params.blocks} > {log:q} 2>&1 "
        "&& echo {params.record} > {output.marker:q}"


rule mesh_figure:
    input:
        meshes=PATHS.file("mesh/summary.json"),
        synapses=PATHS.table("synapses"),
        neurons=PATHS.table("neurons"),
    output:
        figure=report(
            PATHS.file("mesh/neurons.png"),
            caption="../report/meshes.rst",
            category="Meshes",
            subcategory="{dataset}",
        ),
    params:
        mesh_dir=lambda wc: PATHS.file("precomputed/segmentation/mesh", wc.dataset),
    log:
        PATHS.log("mesh/figure"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("mesh_figure"),
    shell:
        "python -m connectomix mesh figure --mesh-dir {params.mesh_dir:q} --synapses {input.synapses:q} "
        "--neurons {input.neurons:q} --out {output.figure:q} > {log:q} 2>&1"


rule mesh_finish:
    input:
        segments=PATHS.table("segments"),
        markers=batch_markers("mesh"),
        # the segmentation's info (it names the mesh folder)
        info=f"{PATHS.file('precomputed/segmentation')}/info",
    output:
        info=f"{PATHS.file('precomputed/segmentation')}/mesh/info",
        summary=PATHS.file("mesh/summary.json"),
    params:
        work=work_dir("mesh"),
        out=lambda wc: PATHS.file("precomputed/segmentation/mesh", wc.dataset),
    log:
        PATHS.log("mesh/finish"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("mesh_finish"),
    shell:
        "python -m connectomix mesh finish --work-dir {params.work:q} --segments {input.segments:q} "
        "--out {params.out:q} --summary {output.summary:q} > {log:q} 2>&1"
