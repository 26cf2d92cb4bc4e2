# Prepared store -> frozen-backbone features, cached once per dataset and shared by every training job.


rule features:
    input:
        "results/prepared/{dataset}.h5",
    output:
        "results/features/{dataset}.h5",
    params:
        backbone=as_json(backbone_params()),
        batch_size=config["backbone"]["batch_size"],
        device=config["backbone"]["device"],
    log:
        "logs/features/{dataset}.log",
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo features --store {input} --out {output} --backbone {params.backbone:q} "
        "--batch-size {params.batch_size} --device {params.device} --claim-gpu > {log} 2>&1"
