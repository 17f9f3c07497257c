# connectomix: serial-section EM -> connectome. `make demo` runs this on config.yaml (the phantom).
# Rules are thin: each calls `python -m connectomix STAGE ...` with explicit paths and parameters.

from snakemake.utils import min_version

min_version("9.0")

# The default config (the phantom) unless config files are given: `--configfile X` runs X alone (the schema fills
# defaults), so a real-data config does not inherit the phantom dataset or its phantom-scaled settings.
# `--config key=value` still overrides config.yaml.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"



report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    dataset="|".join(DATASETS),
    block=r"z\d+_y\d+_x\d+",
    batch=r"z\d+-\d+_y\d+-\d+_x\d+-\d+",



# in pipeline order
include: "rules/phantom.smk"
include: "rules/ingest.smk"
include: "rules/align.smk"
include: "rules/predict.smk"
include: "rules/segment.smk"
include: "rules/skeletonize.smk"
include: "rules/mesh.smk"
include: "rules/synapses.smk"
include: "rules/connectome.smk"
include: "rules/coregister.smk"
include: "rules/analysis.smk"
include: "rules/evaluate.smk"
include: "rules/export.smk"


rule all:
    default_target: True
    input:
        [path for name in DATASETS for path in final_targets(name)],
