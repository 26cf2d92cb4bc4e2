# afo: the retinotopy-inspired brain encoding model and the All-for-One recipe.
# Run: snakemake --cores 2 (see README.md). Stages live in workflow/rules/, science in src/afo/.
from snakemake.utils import min_version

min_version("8.10")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/rois.smk"
include: "workflow/rules/afo.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"


rule all:
    input:
        all_targets(),
    default_target: True
