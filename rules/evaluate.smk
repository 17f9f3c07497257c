# evaluate: each stage's rule file evaluates its outputs (eval/{stage}.json, for datasets with ground truth);
# `metrics` merges a dataset's files into eval/metrics.json.


rule metrics:
    input:
        lambda wc: eval_targets(wc.dataset),
    output:
        PATHS.metrics(),
    log:
        PATHS.log("evaluate/metrics"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("metrics"),
    shell:
        "python -m connectomix evaluate merge {input:q} --out {output:q} > {log:q} 2>&1"
