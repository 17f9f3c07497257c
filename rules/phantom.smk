# phantom: a synthetic EM block with full ground truth (the default dataset).


FINAL_TARGETS["phantom"] = lambda name: [raw_volume_done(name)] if is_phantom(name) else []


rule phantom:
    wildcard_constraints:
        dataset="|".join(PHANTOM_DATASETS),
    output:
        summary=f"{RESULTS}/{{dataset}}/gt/phantom.json",
        raw=directory(f"{RESULTS}/{{dataset}}/volume.zarr/raw"),
        gt=directory(f"{RESULTS}/{{dataset}}/volume.zarr/gt"),
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
        f"{RESULTS}/{{dataset}}/logs/phantom.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=lambda wc: cmx_config.job_resources(40 * voxels(wc.dataset), CFG)["mem_mb"],
        runtime=lambda wc: cmx_config.job_resources(voxels(wc.dataset), CFG)["runtime"],
    shell:
        "python -m connectomix phantom --out-dir {params.out_dir} "
        "--volume {params.volume} --params {params.spec} "
        "--voxel-size {params.voxel_size} --offset-nm {params.offset} --chunk-shape {params.chunks} "
        "--pyramid-levels {params.levels} --pyramid-factor {params.factor} > {log} 2>&1"
