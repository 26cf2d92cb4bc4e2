# New subjects on a trained model's frozen core (config `finetune:`, off by default): a TopyNeck and head per
# subject of the holdout datasets, the backbone and the model's conv blocks frozen; one model file with the
# model's subjects and the new ones.


rule finetune:
    input:
        model=lambda wildcards: SINGLE[wildcards.base],
        stores=stores(FINETUNE["datasets"]),
        features=feature_caches(FINETUNE["datasets"]),
    output:
        model="results/models/finetune/{base}/model.pt",
        metrics="results/models/finetune/{base}/metrics.csv",
    log:
        "logs/train/finetune_{base}.log",
    conda:
        "../../envs/afo.yaml"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    params:
        train=FINETUNE["train"],
    script:
        "../scripts/finetune.py"
