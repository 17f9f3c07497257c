# analysis: cell types, orientation tuning, like-to-like connectivity, connectivity tables and report figures, for
# the datasets with functional data (common.smk's FUNCTIONAL).

ANALYSIS_DIR = PATHS.file("analysis")
ANALYSIS_TABLES = ["cell_types", "tuning", "pairs", "like_to_like", "celltype_connectivity", "connection_vs_distance"]


rule analysis:
    wildcard_constraints:
        dataset=datasets_in("functional"),
    input:
        neurons=PATHS.table("neurons"),
        edges=PATHS.table("edges"),
        morphology=PATHS.table("morphology"),
        matches=PATHS.table("matches"),
        transform=PATHS.summary("coregister"),
    output:
        tables=[f"{ANALYSIS_DIR}/{name}.parquet" for name in ANALYSIS_TABLES],
        summary_json=f"{ANALYSIS_DIR}/like_to_like.json",
        summary=report(
            f"{ANALYSIS_DIR}/summary.html",
            caption="../report/summary.rst",
            category="Summary",
            subcategory="{dataset}",
        ),
        ltl_sc=report(
            f"{ANALYSIS_DIR}/figures/like_to_like_signal_corr.png",
            caption="../report/like_to_like_signal_corr.rst",
            category="Like-to-like",
            subcategory="{dataset}",
        ),
        ltl_ori=report(
            f"{ANALYSIS_DIR}/figures/like_to_like_orientation.png",
            caption="../report/like_to_like_orientation.rst",
            category="Like-to-like",
            subcategory="{dataset}",
        ),
        distance=report(
            f"{ANALYSIS_DIR}/figures/connection_vs_distance.png",
            caption="../report/connection_vs_distance.rst",
            category="Connectivity",
            subcategory="{dataset}",
        ),
        celltypes=report(
            f"{ANALYSIS_DIR}/figures/celltype_connectivity.png",
            caption="../report/celltype_connectivity.rst",
            category="Connectivity",
            subcategory="{dataset}",
        ),
        tuning=report(
            f"{ANALYSIS_DIR}/figures/tuning.png",
            caption="../report/tuning.rst",
            category="Tuning",
            subcategory="{dataset}",
        ),
        coregistration=report(
            f"{ANALYSIS_DIR}/figures/coregistration.png",
            caption="../report/coregistration.rst",
            category="Co-registration",
            subcategory="{dataset}",
        ),
        svg=[
            f"{ANALYSIS_DIR}/figures/{name}.svg"
            for name in [
                "like_to_like_signal_corr",
                "like_to_like_orientation",
                "connection_vs_distance",
                "celltype_connectivity",
                "tuning",
                "coregistration",
            ]
        ],
    params:
        rois=functional_file("rois"),
        responses=functional_file("responses"),
        stimuli=functional_file("stimuli"),
        params=json_arg(CFG["analysis"]),
        # this dataset's slice of the config only: adding another dataset must not rerun this one
        config=lambda wc: json_arg({**CFG, "datasets": {wc.dataset: CFG["datasets"][wc.dataset]}}),
        out_dir=lambda wc: PATHS.file("analysis", wc.dataset),
    log:
        PATHS.log("analysis"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("analysis"),
    shell:
        "python -m connectomix analysis --neurons {input.neurons:q} --edges {input.edges:q} "
        "--morphology {input.morphology:q} --matches {input.matches:q} --transform {input.transform:q} "
        "--rois {params.rois:q} --responses {params.responses:q} --stimuli {params.stimuli:q} "
        "--params {params.params} --config-json {params.config} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule evaluate_analysis:
    wildcard_constraints:
        dataset=datasets_in("functional_phantom"),
    input:
        cell_types=f"{ANALYSIS_DIR}/cell_types.parquet",
        like_to_like=f"{ANALYSIS_DIR}/like_to_like.json",
        neurons=PATHS.table("neurons"),
        phantom=raw_done,
    output:
        celltypes=report(
            PATHS.eval("celltypes"),
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{dataset}",
        ),
        like_to_like=report(
            PATHS.eval("like_to_like"),
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{dataset}",
        ),
    params:
        gt_neurons=lambda wc: PATHS.gt("neurons.parquet", wc.dataset),
        gt_edges=lambda wc: PATHS.gt("edges.parquet", wc.dataset),
        rois_gt=lambda wc: PATHS.gt("functional/rois.parquet", wc.dataset),
        responses=lambda wc: PATHS.gt("functional/responses.npy", wc.dataset),
        stimuli=lambda wc: PATHS.gt("functional/stimuli.parquet", wc.dataset),
        params=json_arg(CFG["analysis"]),
    log:
        PATHS.log("evaluate_analysis"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("evaluate_analysis"),
    shell:
        "python -m connectomix evaluate analysis --cell-types {input.cell_types:q} "
        "--like-to-like {input.like_to_like:q} --neurons {input.neurons:q} --gt-neurons {params.gt_neurons:q} "
        "--gt-edges {params.gt_edges:q} --rois-gt {params.rois_gt:q} "
        "--responses {params.responses:q} --stimuli {params.stimuli:q} "
        "--params {params.params} --celltypes-out {output.celltypes:q} "
        "--like-to-like-out {output.like_to_like:q} > {log:q} 2>&1"
