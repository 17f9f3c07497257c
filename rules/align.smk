# align: serial-section alignment between ingest and predict (align.enabled): per-section transforms estimated at
# setup (connectomix.align), `aligned` and `defects` rendered blockwise; predict then reads `aligned`.

ALIGN = CFG["align"]
ALIGN_SPEC = {k: v for k, v in ALIGN.items() if k not in ("enabled", "missing_affinities")}


# A checkpoint: see "Extending a dataset" in rules/common.smk.
checkpoint align_setup:
    input:
        raw=raw_done,
    output:
        setup=PATHS.setup("align"),
    params:
        volume=volume_of,
        work=work_dir("align"),
        markers=marker_dir,
        spec=json_arg(ALIGN_SPEC),
        block=zyx(CFG["blocks"]["shape"]),
        chunks=zyx(CFG["storage"]["chunk_shape"]),
    log:
        PATHS.log("align/setup"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("align_setup"),
    shell:
        "python -m connectomix align setup --volume {params.volume:q} --work-dir {params.work:q} "
        "--params {params.spec} --block-shape {params.block} --chunk-shape {params.chunks} "
        "--marker-dir {params.markers:q} > {log:q} 2>&1"


rule align_block:
    input:
        setup=setup_of("align_setup"),
    output:
        marker=PATHS.batch_marker("align"),
    params:
        identity=dataset_identity,
        roi=batch_roi(),
        spec=json_arg(ALIGN_SPEC),
        tables=align_tables,
        work=work_dir("align"),
        blocks=batch_blocks,
        record=batch_record,
    log:
        PATHS.log("align/{batch}"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("align_block"),
    shell:
        "python -m connectomix align block --work-dir {params.work:q} --blocks {params.blocks} "
        "> {log:q} 2>&1 && echo {params.record} > {output.marker:q}"


rule align_finish:
    input:
        markers=batch_markers("align"),
    output:
        summary=PATHS.summary("align"),
    params:
        work=work_dir("align"),
        levels=CFG["pyramid"]["levels"],
        factor=zyx(CFG["pyramid"]["factor"]),
    log:
        PATHS.log("align/finish"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("align_finish"),
    shell:
        "python -m connectomix align finish --work-dir {params.work:q} --summary {output.summary:q} "
        "--pyramid-levels {params.levels} --pyramid-factor {params.factor} > {log:q} 2>&1"


rule evaluate_align:
    wildcard_constraints:
        dataset=datasets_in("align_eval"),
    input:
        align=PATHS.summary("align"),
        gt=PATHS.phantom_summary(),
    output:
        metrics=PATHS.eval("align"),
    params:
        volume=volume_of,
        work=work_dir("align"),
        points=lambda wc: PATHS.gt("align/points.parquet", wc.dataset),
        sections=lambda wc: PATHS.gt("align/sections.parquet", wc.dataset),
    log:
        PATHS.log("evaluate/align"),
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("evaluate_align"),
    shell:
        "python -m connectomix evaluate align --volume {params.volume:q} --work-dir {params.work:q} "
        "--points {params.points:q} --sections-gt {params.sections:q} --out {output.metrics:q} > {log:q} 2>&1"
