# All-ROI models trained on every voxel of every training subject: the stage-0 seeds (the first is also the
# naivemix baseline) and the TopyNeck ablations of the config. Training rules claim one GPU each (gpu=1).


rule train_stage0:
    input:
        stores=train_stores(),
        features=train_features(),
    output:
        model="results/models/stage0/seed{seed}/model.pt",
        metrics="results/models/stage0/seed{seed}/metrics.csv",
    params:
        data=data_args(),
        model=as_json(config["model"]),
        train=stage0_params,
        out=subpath(output.model, parent=True),
    log:
        "logs/train/stage0_seed{seed}.log",
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    conda:
        "../../envs/afo.yaml"
    shell:
        "OMP_NUM_THREADS={threads} afo train {params.data} --model-config {params.model:q} "
        "--train-config {params.train:q} --out {params.out} --claim-gpu > {log} 2>&1"


rule train_ablation:
    input:
        stores=train_stores(),
        features=train_features(),
    output:
        model="results/models/ablation/{ablation}/model.pt",
        metrics="results/models/ablation/{ablation}/metrics.csv",
    params:
        data=data_args(),
        model=lambda wc: as_json({**config["model"], **config["ablations"][wc.ablation]}),
        train=stage_params("stage0"),
        out=subpath(output.model, parent=True),
    log:
        "logs/train/ablation_{ablation}.log",
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    conda:
        "../../envs/afo.yaml"
    shell:
        "OMP_NUM_THREADS={threads} afo train {params.data} --model-config {params.model:q} "
        "--train-config {params.train:q} --out {params.out} --claim-gpu > {log} 2>&1"
