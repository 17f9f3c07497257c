# connectome: synapses.parquet + segments + morphology -> neurons.parquet, edges.parquet, connectivity matrix
# (npz + png) -> exports (neuPrint CSVs, GraphML, CAVE-style table).

CONNECTOME = CFG["connectome"]

FINAL_TARGETS["connectome"] = lambda name: [
    f"{RESULTS}/{name}/neurons.parquet",
    f"{RESULTS}/{name}/edges.parquet",
    f"{RESULTS}/{name}/export/export.json",
]
EVAL_TARGETS["connectome"] = lambda name: [f"{RESULTS}/{name}/eval/connectome.json"] if is_phantom(name) else []


rule connectome:
    input:
        synapses=f"{RESULTS}/{{dataset}}/synapses.parquet",
        segments=f"{RESULTS}/{{dataset}}/segments.parquet",
        morphology=f"{RESULTS}/{{dataset}}/morphology.parquet",
    output:
        neurons=f"{RESULTS}/{{dataset}}/neurons.parquet",
        edges=f"{RESULTS}/{{dataset}}/edges.parquet",
        edges_all=f"{RESULTS}/{{dataset}}/edges_all.parquet",
        matrix=f"{RESULTS}/{{dataset}}/connectome/connectivity.npz",
        figure=f"{RESULTS}/{{dataset}}/connectome/connectivity.png",
        summary=f"{RESULTS}/{{dataset}}/connectome/summary.json",
    params:
        out_dir=dataset_dir,
        volume=volume_of,
        spec=json_arg(CONNECTOME),
    log:
        f"{RESULTS}/{{dataset}}/logs/connectome/build.log",
    conda:
        ENV
    threads: 1
    resources:
        **slab_resources(16),
    shell:
        "python -m connectomix connectome --synapses {input.synapses} --segments {input.segments} "
        "--morphology {input.morphology} --volume {params.volume} --params {params.spec} "
        "--out-dir {params.out_dir} --name {wildcards.dataset} > {log} 2>&1"


rule export_connectome:
    input:
        synapses=f"{RESULTS}/{{dataset}}/synapses.parquet",
        neurons=f"{RESULTS}/{{dataset}}/neurons.parquet",
        edges=f"{RESULTS}/{{dataset}}/edges.parquet",
    output:
        summary=f"{RESULTS}/{{dataset}}/export/export.json",
        graphml=f"{RESULTS}/{{dataset}}/export/connectome.graphml",
        cave=f"{RESULTS}/{{dataset}}/export/cave_synapses.csv",
    params:
        out_dir=lambda wc: f"{RESULTS}/{wc.dataset}/export",
        name=CONNECTOME["neuprint_dataset"],
        voxel_size=lambda wc: zyx(dataset_cfg(wc.dataset)["voxel_size"]),
    log:
        f"{RESULTS}/{{dataset}}/logs/connectome/export.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=CFG["resources"]["min_mem_mb"],
        runtime=CFG["resources"]["min_runtime_min"],
    shell:
        "python -m connectomix export connectome --synapses {input.synapses} --neurons {input.neurons} "
        "--edges {input.edges} --out-dir {params.out_dir} --dataset-name {params.name} "
        "--voxel-size {params.voxel_size} > {log} 2>&1"


rule evaluate_connectome:
    wildcard_constraints:
        dataset="|".join(PHANTOM_DATASETS),
    input:
        edges=f"{RESULTS}/{{dataset}}/edges.parquet",
        gt=f"{RESULTS}/{{dataset}}/gt/phantom.json",
    output:
        metrics=f"{RESULTS}/{{dataset}}/eval/connectome.json",
    params:
        volume=volume_of,
        gt_edges=lambda wc: f"{RESULTS}/{wc.dataset}/gt/edges.parquet",
        min_synapses=CONNECTOME["evaluation"]["min_synapses"],
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate/connectome.log",
    conda:
        ENV
    threads: 1
    resources:
        **slab_resources(16),
    shell:
        "python -m connectomix evaluate connectome --edges {input.edges} --gt-edges {params.gt_edges} "
        "--volume {params.volume} --min-synapses {params.min_synapses} --out {output.metrics} > {log} 2>&1"
