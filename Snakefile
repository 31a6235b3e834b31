# The same DAG as dvc.yaml, for `snakemake --cores N` and clusters (--profile profiles/slurm).
# Thin: params.yaml is the config (variants: --configfile params/<variant>.yaml), the rules live in
# workflow/rules/, and every rule runs the stage script that dvc.yaml runs.
configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/inputs.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/clean.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        rules.report.output,
        rules.pack.output,
