# coregister: two-photon ROIs -> EM somata (affine fit + one-to-one ILP assignment), matches.parquet. Datasets with
# functional data (coregister.functional, or a phantom's gt/functional/): common.smk's FUNCTIONAL.

COREG = CFG["coregister"]


rule coregister:
    wildcard_constraints:
        dataset=datasets_in("functional"),
    input:
        neurons=PATHS.table("neurons"),
        functional=functional_inputs,
    output:
        matches=PATHS.table("matches"),
        transform=PATHS.summary("coregister"),
    params:
        rois=functional_file("rois"),
        responses=functional_file("responses"),
        stimuli=functional_file("stimuli"),
        params=json_arg({k: v for k, v in COREG.items() if k not in ("functional", "landmarks")}),
        landmarks=lambda wc: json_arg(COREG["landmarks"].get(wc.dataset, [])),
    log:
        PATHS.log("coregister"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("coregister"),
    shell:
        "python -m connectomix coregister --rois {params.rois:q} --responses {params.responses:q} "
        "--stimuli {params.stimuli:q} --neurons {input.neurons:q} --params {params.params} "
        "--landmarks {params.landmarks} --out {output.matches:q} --transform {output.transform:q} > {log:q} 2>&1"


rule evaluate_coregister:
    wildcard_constraints:
        dataset=datasets_in("functional_phantom"),
    input:
        matches=PATHS.table("matches"),
        transform=PATHS.summary("coregister"),
        neurons=PATHS.table("neurons"),
        phantom=raw_done,
    output:
        report(
            PATHS.eval("coregister"),
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{dataset}",
        ),
    params:
        rois_gt=lambda wc: PATHS.gt("functional/rois.parquet", wc.dataset),
        affine_gt=lambda wc: PATHS.gt("functional/affine.json", wc.dataset),
        gt_neurons=lambda wc: PATHS.gt("neurons.parquet", wc.dataset),
        radius=CFG["analysis"]["soma_match_radius_nm"],
    log:
        PATHS.log("evaluate_coregister"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("evaluate_coregister"),
    shell:
        "python -m connectomix evaluate coregister --matches {input.matches:q} --transform {input.transform:q} "
        "--rois-gt {params.rois_gt:q} --affine-gt {params.affine_gt:q} "
        "--neurons {input.neurons:q} --gt-neurons {params.gt_neurons:q} --radius-nm {params.radius} "
        "--out {output:q} > {log:q} 2>&1"
