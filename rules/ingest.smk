# ingest: raw EM sections (TIFF, PNG/JPEG, HDF5, zarr, N5) -> `raw` in the dataset's OME-Zarr, with its pyramid.


rule ingest:
    wildcard_constraints:
        dataset=datasets_in("source"),
    # `raw` is not a declared output: Snakemake would delete it before a rerun, and extending a dataset (a larger
    # ROI, or a source with more data) grows it in place, keeping the voxels ingested before (connectomix.ingest).
    output:
        summary=PATHS.summary("ingest"),
    params:
        volume=volume_of,
        source=lambda wc: json_arg(dataset_cfg(wc.dataset)["source"]),
        voxel_size=lambda wc: zyx(dataset_cfg(wc.dataset)["voxel_size"]),
        offset=lambda wc: zyx(dataset_cfg(wc.dataset)["offset_nm"]),
        roi=roi_args,
        # the volume's shape: a source that gained data (no roi) reruns ingest, which extends `raw`
        shape=lambda wc: zyx(WF.shape(wc.dataset)),
        chunks=zyx(CFG["storage"]["chunk_shape"]),
        # a replaced or edited source file reruns ingest (its data is then ingested afresh)
        identity=source_identity,
        # per-block digests of raw in the summary: predict reruns the blocks whose voxels changed
        blocks=zyx(CFG["blocks"]["shape"]),
        levels=CFG["pyramid"]["levels"],
        factor=zyx(CFG["pyramid"]["factor"]),
    log:
        PATHS.log("ingest"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("ingest"),
    shell:
        "python -m connectomix ingest --source {params.source} "
        "--volume {params.volume:q} --voxel-size {params.voxel_size} "
        "--offset-nm {params.offset} --chunk-shape {params.chunks} {params.roi} "
        "--pyramid-levels {params.levels} --pyramid-factor {params.factor} --digest-block-shape {params.blocks} "
        "--summary {output.summary:q} > {log:q} 2>&1"
