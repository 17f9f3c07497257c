# analysis: cell types, orientation tuning, like-to-like connectivity, connectivity tables and report figures.
# Needs rules/coregister.smk (FUNCTIONAL, COREG_DATASETS, COREG_PHANTOMS).

ANALYSIS_DIR = f"{RESULTS}/{{dataset}}/analysis"
ANALYSIS_TABLES = ["cell_types", "tuning", "pairs", "like_to_like", "celltype_connectivity", "connection_vs_distance"]

FINAL_TARGETS["analysis"] = lambda name: (
    [f"{RESULTS}/{name}/analysis/like_to_like.json", f"{RESULTS}/{name}/analysis/summary.html"]
    if name in FUNCTIONAL
    else []
)
EVAL_TARGETS["analysis"] = lambda name: (
    [f"{RESULTS}/{name}/eval/celltypes.json", f"{RESULTS}/{name}/eval/like_to_like.json"]
    if name in FUNCTIONAL and is_phantom(name)
    else []
)


rule analysis:
    wildcard_constraints:
        dataset="|".join(COREG_DATASETS),
    input:
        neurons=f"{RESULTS}/{{dataset}}/neurons.parquet",
        edges=f"{RESULTS}/{{dataset}}/edges.parquet",
        morphology=f"{RESULTS}/{{dataset}}/morphology.parquet",
        matches=f"{RESULTS}/{{dataset}}/matches.parquet",
        transform=f"{RESULTS}/{{dataset}}/coregister.json",
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
        rois=lambda wc: FUNCTIONAL[wc.dataset]["rois"],
        responses=lambda wc: FUNCTIONAL[wc.dataset]["responses"],
        stimuli=lambda wc: FUNCTIONAL[wc.dataset]["stimuli"],
        params=json_arg(CFG["analysis"]),
        # this dataset's slice of the config only: adding another dataset must not rerun this one
        config=lambda wc: json_arg({**CFG, "datasets": {wc.dataset: CFG["datasets"][wc.dataset]}}),
        out_dir=lambda wc: f"{RESULTS}/{wc.dataset}/analysis",
    log:
        f"{RESULTS}/{{dataset}}/logs/analysis.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m connectomix analysis --neurons {input.neurons} --edges {input.edges} "
        "--morphology {input.morphology} --matches {input.matches} --transform {input.transform} "
        "--rois {params.rois} --responses {params.responses} --stimuli {params.stimuli} "
        "--params {params.params} --config-json {params.config} --out-dir {params.out_dir} > {log} 2>&1"


rule evaluate_analysis:
    wildcard_constraints:
        dataset="|".join(COREG_PHANTOMS),
    input:
        cell_types=f"{RESULTS}/{{dataset}}/analysis/cell_types.parquet",
        like_to_like=f"{RESULTS}/{{dataset}}/analysis/like_to_like.json",
        neurons=f"{RESULTS}/{{dataset}}/neurons.parquet",
        phantom=lambda wc: raw_volume_done(wc.dataset),
    output:
        celltypes=report(
            f"{RESULTS}/{{dataset}}/eval/celltypes.json",
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{dataset}",
        ),
        like_to_like=report(
            f"{RESULTS}/{{dataset}}/eval/like_to_like.json",
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{dataset}",
        ),
    params:
        gt=lambda wc: f"{RESULTS}/{wc.dataset}/gt",
        params=json_arg(CFG["analysis"]),
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate_analysis.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m connectomix evaluate analysis --cell-types {input.cell_types} "
        "--like-to-like {input.like_to_like} --neurons {input.neurons} --gt-neurons {params.gt}/neurons.parquet "
        "--gt-edges {params.gt}/edges.parquet --rois-gt {params.gt}/functional/rois.parquet "
        "--responses {params.gt}/functional/responses.npy --stimuli {params.gt}/functional/stimuli.parquet "
        "--params {params.params} --celltypes-out {output.celltypes} "
        "--like-to-like-out {output.like_to_like} > {log} 2>&1"
