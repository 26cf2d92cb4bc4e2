# Prepared store -> frozen-backbone features, cached once per dataset and shared by every training job.


rule features:
    input:
        "results/prepared/{dataset}.h5",
    output:
        "results/features/{dataset}.h5",
    params:
        backbone=backbone_params(),
    log:
        "logs/features/{dataset}.log",
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
    conda:
        "../../envs/afo.yaml"
    script:
        "../scripts/features.py"
