# synapses: synapse_maps (cleft/pre/post) + segmentation -> clefts (per block, one job per batch of blocks) ->
# stitched clefts, partners -> synapses.parquet (CAVE-style). Block ids are those of block_grid(); block markers
# under blocks/synapses/, batch markers under blocks/synapses/batches/.

from connectomix.config import file_args

SYNAPSES = CFG["synapses"]
# real datasets with cleft masks: their detected clefts are scored against them (eval/clefts.json)
CLEFT_GT = {name: gt for name, gt in SYNAPSES["evaluation"]["ground_truth"].items()
            if name in DATASETS and not is_phantom(name)}

FINAL_TARGETS["synapses"] = lambda name: [f"{RESULTS}/{name}/synapses.parquet"]
EVAL_TARGETS["synapses"] = lambda name: [f"{RESULTS}/{name}/eval/synapses.json"] if is_phantom(name) else []
EVAL_TARGETS["clefts"] = lambda name: [f"{RESULTS}/{name}/eval/clefts.json"] if name in CLEFT_GT else []


# A checkpoint: see "Extending a dataset" in rules/common.smk. It needs the synapse_maps array, not the predictions.
checkpoint synapses_setup:
    input:
        predict=f"{RESULTS}/{{dataset}}/predict/setup.json",
    output:
        setup=f"{RESULTS}/{{dataset}}/synapses/setup.json",
    params:
        work=lambda wc: f"{RESULTS}/{wc.dataset}/synapses",
        volume=volume_of,
        markers=lambda wc: f"{RESULTS}/{wc.dataset}/blocks",
        spec=json_arg(SYNAPSES),
        block=zyx(CFG["blocks"]["shape"]),
    log:
        f"{RESULTS}/{{dataset}}/logs/synapses/setup.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=CFG["resources"]["min_mem_mb"],
        runtime=CFG["resources"]["min_runtime_min"],
    shell:
        "python -m connectomix synapses setup --volume {params.volume} --work-dir {params.work} "
        "--params {params.spec} --block-shape {params.block} --marker-dir {params.markers} > {log} 2>&1"


rule synapses_block:
    input:
        setup=setup_of("synapses_setup"),
        # the predict batches whose synapse maps its blocks read
        maps=lambda wc: batches_meeting("predict", synapses_halo(wc))(wc),
    output:
        marker=f"{RESULTS}/{{dataset}}/blocks/synapses/batches/{{batch}}.json",
    params:
        identity=dataset_identity,
        roi=lambda wc: batch_roi(synapses_halo(wc))(wc),
        spec=json_arg(SYNAPSES),
        work=lambda wc: f"{RESULTS}/{wc.dataset}/synapses",
        blocks=batch_blocks,
        record=batch_record,
    log:
        f"{RESULTS}/{{dataset}}/logs/synapses/blocks/{{batch}}.log",
    conda:
        ENV
    threads: 1
    resources:
        # 4 channels of uint8/float32 per read voxel, plus labels
        **batch_resources(mem_factor=24),
    shell:
        "python -m connectomix synapses block --work-dir {params.work} --blocks {params.blocks} > {log} 2>&1 "
        "&& echo {params.record} > {output.marker}"


rule synapses_stitch:
    input:
        markers=batch_markers("synapses"),
        segments=f"{RESULTS}/{{dataset}}/segments.parquet",
        # the synapse maps' checksum (provenance) is set by predict_finish
        predict=f"{RESULTS}/{{dataset}}/predict.json",
    output:
        synapses=f"{RESULTS}/{{dataset}}/synapses.parquet",
        clefts=f"{RESULTS}/{{dataset}}/synapses/clefts.parquet",
        summary=f"{RESULTS}/{{dataset}}/synapses/summary.json",
    params:
        work=lambda wc: f"{RESULTS}/{wc.dataset}/synapses",
    log:
        f"{RESULTS}/{{dataset}}/logs/synapses/stitch.log",
    conda:
        ENV
    threads: 1
    resources:
        # one block (+ partner halo) at a time: EDT indices dominate
        mem_mb=lambda wc: cmx_config.job_resources(80 * block_grid(wc.dataset, (4, 32, 32)).block((0, 0, 0)).read.size, CFG)["mem_mb"],
        runtime=lambda wc: cmx_config.job_resources(4 * voxels(wc.dataset), CFG)["runtime"],
    shell:
        "python -m connectomix synapses finish --work-dir {params.work} --synapses {output.synapses} "
        "--clefts {output.clefts} --summary {output.summary} > {log} 2>&1"


rule evaluate_synapses:
    wildcard_constraints:
        dataset="|".join(PHANTOM_DATASETS),
    input:
        synapses=f"{RESULTS}/{{dataset}}/synapses.parquet",
        gt=f"{RESULTS}/{{dataset}}/gt/phantom.json",
    output:
        metrics=f"{RESULTS}/{{dataset}}/eval/synapses.json",
    params:
        volume=volume_of,
        gt_synapses=lambda wc: f"{RESULTS}/{wc.dataset}/gt/synapses.parquet",
        tolerance=SYNAPSES["evaluation"]["tolerance_nm"],
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate/synapses.log",
    conda:
        ENV
    threads: 1
    resources:
        **slab_resources(16),
    shell:
        "python -m connectomix evaluate synapses --synapses {input.synapses} --gt-synapses {params.gt_synapses} "
        "--volume {params.volume} --tolerance-nm {params.tolerance} --out {output.metrics} > {log} 2>&1"


rule evaluate_clefts:
    wildcard_constraints:
        dataset="|".join(CLEFT_GT or ["__none__"]),
    input:
        synapses=f"{RESULTS}/{{dataset}}/synapses.parquet",
        gt=lambda wc: CLEFT_GT[wc.dataset]["path"],
    output:
        metrics=f"{RESULTS}/{{dataset}}/eval/clefts.json",
    params:
        volume=volume_of,
        gt=lambda wc: file_args(CLEFT_GT[wc.dataset], roi=dataset_cfg(wc.dataset).get("roi")),
        tolerance=SYNAPSES["evaluation"]["tolerance_nm"],
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate/clefts.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=lambda wc: cmx_config.job_resources(4 * voxels(wc.dataset), CFG)["mem_mb"],
        runtime=lambda wc: cmx_config.job_resources(voxels(wc.dataset), CFG)["runtime"],
    shell:
        "python -m connectomix evaluate clefts --volume {params.volume} {params.gt} "
        "--tolerance-nm {params.tolerance} --out {output.metrics} > {log} 2>&1"
