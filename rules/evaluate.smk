# evaluate: per-stage accuracy files eval/{stage}.json (registered in EVAL_TARGETS by each stage) for datasets with
# ground truth, merged into eval/metrics.json. Segmentation is evaluated on phantoms (gt/labels) and on datasets
# listed in segment.evaluation.ground_truth.
from connectomix.segment.workflow import ground_truth_args

SEGMENT_GT = CFG["segment"]["evaluation"]["ground_truth"]
SEGMENT_EVAL_DATASETS = [name for name in DATASETS if is_phantom(name) or name in SEGMENT_GT]

EVAL_TARGETS["segmentation"] = lambda name: (
    [f"{RESULTS}/{name}/eval/segmentation.json"] if name in SEGMENT_EVAL_DATASETS else []
)
# every registered stage metric file of a dataset (looked up lazily: later .smk files register theirs too)
eval_stage_files = lambda name: [path for targets in EVAL_TARGETS.values() for path in targets(name)]


rule evaluate_segmentation:
    wildcard_constraints:
        dataset="|".join(SEGMENT_EVAL_DATASETS or ["__none__"]),
    input:
        segment=f"{RESULTS}/{{dataset}}/segment.json",
        gt=lambda wc: (
            [f"{RESULTS}/{wc.dataset}/gt/phantom.json"] if is_phantom(wc.dataset) else [SEGMENT_GT[wc.dataset]["path"]]
        ),
    output:
        metrics=f"{RESULTS}/{{dataset}}/eval/segmentation.json",
        plot=f"{RESULTS}/{{dataset}}/eval/segmentation_sweep.png",
    params:
        gt=lambda wc: ground_truth_args(
            None if is_phantom(wc.dataset) else SEGMENT_GT[wc.dataset], dataset_cfg(wc.dataset).get("roi")
        ),
        volume=volume_of,
        work=lambda wc: f"{RESULTS}/{wc.dataset}/segment",
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate/segmentation.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=lambda wc: cmx_config.job_resources(40 * voxels(wc.dataset), CFG)["mem_mb"],
        runtime=lambda wc: cmx_config.job_resources(voxels(wc.dataset), CFG)["runtime"],
    shell:
        "python -m connectomix evaluate segmentation --volume {params.volume} --work-dir {params.work} {params.gt} "
        "--out {output.metrics} --plot {output.plot} --dataset {wildcards.dataset} > {log} 2>&1"


rule metrics:
    input:
        lambda wc: eval_stage_files(wc.dataset),
    output:
        f"{RESULTS}/{{dataset}}/eval/metrics.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate/metrics.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=CFG["resources"]["min_mem_mb"],
        runtime=CFG["resources"]["min_runtime_min"],
    shell:
        "python -m connectomix evaluate merge {input} --out {output} > {log} 2>&1"


FINAL_TARGETS["evaluate"] = lambda name: eval_stage_files(name) + (
    [f"{RESULTS}/{name}/eval/metrics.json"] if eval_stage_files(name) else []
)
