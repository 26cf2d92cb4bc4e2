# Prepared store -> frozen-backbone features, cached once per dataset and shared by every training job.
# With backbone.cache: none no job asks for a cache (common.smk feature_caches), so this rule never runs: training,
# prediction, dark knowledge and probing run the backbone on the store's images inside each batch.


rule features:
    input:
        "results/prepared/{dataset}.h5",
    output:
        "results/features/{dataset}.h5",
    log:
        "logs/features/{dataset}.log",
    conda:
        "../../envs/afo.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
    params:
        backbone=backbone_params(),
    script:
        "../scripts/features.py"
