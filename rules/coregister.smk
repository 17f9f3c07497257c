# coregister: two-photon ROIs -> EM somata (affine fit + one-to-one ILP assignment), matches.parquet.

COREG = CFG["coregister"]
# Functional files per dataset: configured under coregister.functional (three tables, or one NWB file passed as
# all three), else the phantom's gt/functional/.
FUNCTIONAL = {
    name: ({part: COREG["functional"][name]["nwb"] for part in ("rois", "responses", "stimuli")}
           if "nwb" in COREG["functional"].get(name, {}) else COREG["functional"].get(name))
    or {
        "rois": f"{RESULTS}/{name}/gt/functional/rois.parquet",
        "responses": f"{RESULTS}/{name}/gt/functional/responses.npy",
        "stimuli": f"{RESULTS}/{name}/gt/functional/stimuli.parquet",
    }
    for name in DATASETS
    if name in COREG["functional"] or is_phantom(name)
}
# What a job waits for: the configured files, or the phantom's summary (written after its gt/functional/ files).
FUNCTIONAL_INPUTS = {
    name: sorted(set(COREG["functional"][name].values())) if name in COREG["functional"] else [raw_volume_done(name)]
    for name in FUNCTIONAL
}
COREG_DATASETS = list(FUNCTIONAL) or ["__none__"]
COREG_PHANTOMS = [name for name in FUNCTIONAL if is_phantom(name)] or ["__none__"]

FINAL_TARGETS["coregister"] = lambda name: [f"{RESULTS}/{name}/matches.parquet"] if name in FUNCTIONAL else []
EVAL_TARGETS["coregister"] = lambda name: (
    [f"{RESULTS}/{name}/eval/coregister.json"] if name in FUNCTIONAL and is_phantom(name) else []
)


rule coregister:
    wildcard_constraints:
        dataset="|".join(COREG_DATASETS),
    input:
        neurons=f"{RESULTS}/{{dataset}}/neurons.parquet",
        functional=lambda wc: FUNCTIONAL_INPUTS[wc.dataset],
    output:
        matches=f"{RESULTS}/{{dataset}}/matches.parquet",
        transform=f"{RESULTS}/{{dataset}}/coregister.json",
    params:
        rois=lambda wc: FUNCTIONAL[wc.dataset]["rois"],
        responses=lambda wc: FUNCTIONAL[wc.dataset]["responses"],
        stimuli=lambda wc: FUNCTIONAL[wc.dataset]["stimuli"],
        params=json_arg({k: v for k, v in COREG.items() if k not in ("functional", "landmarks")}),
        landmarks=lambda wc: json_arg(COREG["landmarks"].get(wc.dataset, [])),
    log:
        f"{RESULTS}/{{dataset}}/logs/coregister.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m connectomix coregister --rois {params.rois} --responses {params.responses} "
        "--stimuli {params.stimuli} --neurons {input.neurons} --params {params.params} "
        "--landmarks {params.landmarks} --out {output.matches} --transform {output.transform} > {log} 2>&1"


rule evaluate_coregister:
    wildcard_constraints:
        dataset="|".join(COREG_PHANTOMS),
    input:
        matches=f"{RESULTS}/{{dataset}}/matches.parquet",
        transform=f"{RESULTS}/{{dataset}}/coregister.json",
        neurons=f"{RESULTS}/{{dataset}}/neurons.parquet",
        phantom=lambda wc: raw_volume_done(wc.dataset),
    output:
        report(
            f"{RESULTS}/{{dataset}}/eval/coregister.json",
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{dataset}",
        ),
    params:
        gt=lambda wc: f"{RESULTS}/{wc.dataset}/gt",
        radius=CFG["analysis"]["soma_match_radius_nm"],
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate_coregister.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m connectomix evaluate coregister --matches {input.matches} --transform {input.transform} "
        "--rois-gt {params.gt}/functional/rois.parquet --affine-gt {params.gt}/functional/affine.json "
        "--neurons {input.neurons} --gt-neurons {params.gt}/neurons.parquet --radius-nm {params.radius} "
        "--out {output} > {log} 2>&1"
