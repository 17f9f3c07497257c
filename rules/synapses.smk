# synapses: synapse_maps (cleft/pre/post) + segmentation -> clefts (per block, one job per batch of blocks) ->
# stitched clefts, partners -> synapses.parquet (CAVE-style). Block markers under blocks/synapses/, batch markers
# under blocks/synapses/batches/.
# Evaluation: phantoms (gt/synapses.parquet), and real datasets with cleft masks (eval/clefts.json).

SYNAPSES = CFG["synapses"]
# pairing 'model': the partner classifier (a new model file reruns the stitch, which assigns partners)
PARTNER_MODEL = [SYNAPSES["partner_model"]] if SYNAPSES["pairing"] == "model" else []
# the image the synapse maps were predicted from (its grey values near each cleft are partner evidence)
SYNAPSES_RAW = "aligned" if CFG["align"]["enabled"] else "raw"


# A checkpoint: see "Extending a dataset" in rules/common.smk. It needs the synapse_maps array, not the predictions.
checkpoint synapses_setup:
    input:
        predict=PATHS.setup("predict"),
    output:
        setup=PATHS.setup("synapses"),
    params:
        work=work_dir("synapses"),
        volume=volume_of,
        markers=marker_dir,
        spec=json_arg(SYNAPSES),
        block=zyx(CFG["blocks"]["shape"]),
        image=SYNAPSES_RAW,
    log:
        PATHS.log("synapses/setup"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("synapses_setup"),
    shell:
        "python -m connectomix synapses setup --volume {params.volume:q} --work-dir {params.work:q} "
        "--params {params.spec} --block-shape {params.block} --marker-dir {params.markers:q} "
        "--raw {params.image} > {log:q} 2>&1"


rule synapses_block:
    input:
        setup=setup_of("synapses_setup"),
        # the predict batches whose synapse maps its blocks read
        maps=batches_meeting("predict", "synapses"),
    output:
        marker=PATHS.batch_marker("synapses"),
    params:
        identity=dataset_identity,
        roi=batch_roi("synapses"),
        # the raw voxels behind the synapse maps its blocks read
        raw=raw_reads("synapses", "predict"),
        spec=json_arg(SYNAPSES),
        work=work_dir("synapses"),
        blocks=batch_blocks,
        record=batch_record,
    log:
        PATHS.log("synapses/blocks/{batch}"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("synapses_block"),
    shell:
        "python -m connectomix synapses block --work-dir {params.work:q} --blocks {params.blocks} > {log:q} 2>&1 "
        "&& echo {params.record} > {output.marker:q}"


rule synapses_stitch:
    input:
        markers=batch_markers("synapses"),
        segments=PATHS.table("segments"),
        # the synapse maps' checksum (provenance) is set by predict_finish
        predict=PATHS.summary("predict"),
        partner_model=PARTNER_MODEL,
    output:
        synapses=PATHS.table("synapses"),
        clefts=PATHS.file("synapses/clefts.parquet"),
        summary=PATHS.file("synapses/summary.json"),
    params:
        work=work_dir("synapses"),
    log:
        PATHS.log("synapses/stitch"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("synapses_stitch"),
    shell:
        "python -m connectomix synapses finish --work-dir {params.work:q} --synapses {output.synapses:q} "
        "--clefts {output.clefts:q} --summary {output.summary:q} > {log:q} 2>&1"


rule evaluate_synapses:
    wildcard_constraints:
        dataset=datasets_in("phantom"),
    input:
        synapses=PATHS.table("synapses"),
        gt=PATHS.phantom_summary(),
    output:
        metrics=PATHS.eval("synapses"),
    params:
        volume=volume_of,
        gt_synapses=lambda wc: PATHS.gt("synapses.parquet", wc.dataset),
        tolerance=SYNAPSES["evaluation"]["tolerance_nm"],
    log:
        PATHS.log("evaluate/synapses"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("evaluate_synapses"),
    shell:
        "python -m connectomix evaluate synapses --synapses {input.synapses:q} --gt-synapses {params.gt_synapses:q} "
        "--volume {params.volume:q} --tolerance-nm {params.tolerance} --out {output.metrics:q} > {log:q} 2>&1"


rule evaluate_clefts:
    wildcard_constraints:
        dataset=datasets_in("cleft_eval"),
    input:
        synapses=PATHS.table("synapses"),
        gt=gt_files("clefts"),
    output:
        metrics=PATHS.eval("clefts"),
    params:
        volume=volume_of,
        gt=gt_args("clefts"),
        tolerance=SYNAPSES["evaluation"]["tolerance_nm"],
    log:
        PATHS.log("evaluate/clefts"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("evaluate_clefts"),
    shell:
        "python -m connectomix evaluate clefts --volume {params.volume:q} {params.gt} "
        "--tolerance-nm {params.tolerance} --out {output.metrics:q} > {log:q} 2>&1"
