# afo: the retinotopy-inspired brain encoding model and the All-for-One recipe.
# Run: snakemake --cores 2 (see README.md). Stages live in workflow/rules/, science in src/afo/.
from snakemake.utils import min_version

min_version("8.10")


# A config named on the command line (--configfile) is the whole configuration; the embedded demo is used only
# when none is named. (A top-level `configfile:` would be merged under the user's file, and its datasets kept.)
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/rois.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/probing.smk"
include: "workflow/rules/decoding.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/finetune.smk"


rule all:
    default_target: True
    input:
        analysis_targets(),
