# phantom: a synthetic EM block with full ground truth (the default dataset).


rule phantom:
    wildcard_constraints:
        dataset=datasets_in("phantom"),
    output:
        summary=PATHS.phantom_summary(),
        raw=directory(PATHS.array("raw")),
        gt=directory(PATHS.array("gt")),
    params:
        out_dir=dataset_dir,
        volume=volume_of,
        spec=lambda wc: json_arg(dataset_cfg(wc.dataset)["phantom"]),
        voxel_size=lambda wc: zyx(dataset_cfg(wc.dataset)["voxel_size"]),
        offset=lambda wc: zyx(dataset_cfg(wc.dataset)["offset_nm"]),
        chunks=zyx(CFG["storage"]["chunk_shape"]),
        levels=CFG["pyramid"]["levels"],
        factor=zyx(CFG["pyramid"]["factor"]),
    log:
        PATHS.log("phantom"),
    conda:
        ENV
    threads: 2
    resources:
        **resources_of("phantom"),
    shell:
        "python -m connectomix phantom --out-dir {params.out_dir:q} "
        "--volume {params.volume:q} --params {params.spec} "
        "--voxel-size {params.voxel_size} --offset-nm {params.offset} --chunk-shape {params.chunks} "
        "--pyramid-levels {params.levels} --pyramid-factor {params.factor} > {log:q} 2>&1"
