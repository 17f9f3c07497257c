# connectome: synapses.parquet + segments + morphology -> neurons.parquet, edges.parquet, connectivity matrix
# (npz + png) -> exports (neuPrint CSVs, GraphML, CAVE-style table).

CONNECTOME = CFG["connectome"]


rule connectome:
    input:
        synapses=PATHS.table("synapses"),
        segments=PATHS.table("segments"),
        morphology=PATHS.table("morphology"),
    output:
        neurons=PATHS.table("neurons"),
        edges=PATHS.table("edges"),
        edges_all=PATHS.table("edges_all"),
        matrix=PATHS.file("connectome/connectivity.npz"),
        figure=report(
            PATHS.file("connectome/connectivity.png"),
            caption="../report/connectivity.rst",
            category="Connectivity",
            subcategory="{dataset}",
        ),
        summary=PATHS.file("connectome/summary.json"),
    params:
        out_dir=dataset_dir,
        volume=volume_of,
        spec=json_arg(CONNECTOME),
    log:
        PATHS.log("connectome/build"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("connectome"),
    shell:
        "python -m connectomix connectome --synapses {input.synapses:q} --segments {input.segments:q} "
        "--morphology {input.morphology:q} --volume {params.volume:q} --params {params.spec} "
        "--out-dir {params.out_dir:q} --name {wildcards.dataset:q} > {log:q} 2>&1"


rule export_connectome:
    input:
        synapses=PATHS.table("synapses"),
        neurons=PATHS.table("neurons"),
        edges=PATHS.table("edges"),
    output:
        summary=PATHS.file("export/export.json"),
        graphml=PATHS.file("export/connectome.graphml"),
        cave=PATHS.file("export/cave_synapses.csv"),
    params:
        out_dir=lambda wc: PATHS.file("export", wc.dataset),
        name=CONNECTOME["neuprint_dataset"],
        voxel_size=lambda wc: zyx(dataset_cfg(wc.dataset)["voxel_size"]),
    log:
        PATHS.log("connectome/export"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("export_connectome"),
    shell:
        "python -m connectomix export connectome --synapses {input.synapses:q} --neurons {input.neurons:q} "
        "--edges {input.edges:q} --out-dir {params.out_dir:q} --dataset-name {params.name:q} "
        "--voxel-size {params.voxel_size} > {log:q} 2>&1"


rule evaluate_connectome:
    wildcard_constraints:
        dataset=datasets_in("phantom"),
    input:
        edges=PATHS.table("edges"),
        gt=PATHS.phantom_summary(),
    output:
        metrics=PATHS.eval("connectome"),
    params:
        volume=volume_of,
        gt_edges=lambda wc: PATHS.gt("edges.parquet", wc.dataset),
        min_synapses=CONNECTOME["evaluation"]["min_synapses"],
    log:
        PATHS.log("evaluate/connectome"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("evaluate_connectome"),
    shell:
        "python -m connectomix evaluate connectome --edges {input.edges:q} --gt-edges {params.gt_edges:q} "
        "--volume {params.volume:q} --min-synapses {params.min_synapses} --out {output.metrics:q} > {log:q} 2>&1"
