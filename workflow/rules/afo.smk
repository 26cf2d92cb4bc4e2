# The All-for-One recipe (paper 3.2): stage 1 per ROI -> dark knowledge -> stage 2 per ROI (helpers distilled)
# -> [S2+1] -> stage 3 all-ROI model with ground truth and dark knowledge, soup of its top-k checkpoints.


rule train_stage1:
    input:
        stores=train_stores(),
        features=train_features(),
        rois=roi_table,
        neck=neck_init_input,
    output:
        model="results/models/{recipe}/stage1/roi{roi}/model.pt",
        metrics="results/models/{recipe}/stage1/roi{roi}/metrics.csv",
    params:
        data=data_args(),
        model=as_json(config["model"]),
        train=stage_params("stage1"),
        neck=neck_init_arg(),
        out=subpath(output.model, parent=True),
    log:
        "logs/train/{recipe}_stage1_roi{roi}.log",
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    conda:
        "../../envs/afo.yaml"
    shell:
        "OMP_NUM_THREADS={threads} afo train {params.data} --model-config {params.model:q} "
        "--train-config {params.train:q} --rois {input.rois} --roi {wildcards.roi} {params.neck} "
        "--out {params.out} --claim-gpu > {log} 2>&1"


rule dark_knowledge:
    input:
        model="results/models/{recipe}/{stage}/roi{roi}/model.pt",
        stores=train_stores(),
        features=train_features(),
        rois=roi_table,
    output:
        "results/models/{recipe}/{stage}/roi{roi}/dk.h5",
    params:
        data=data_args(),
    wildcard_constraints:
        stage="stage1|stage2|stage2plus",
    log:
        "logs/dk/{recipe}_{stage}_roi{roi}.log",
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    conda:
        "../../envs/afo.yaml"
    shell:
        "OMP_NUM_THREADS={threads} afo predict {params.data} --model {input.model} --splits train,val "
        "--rois {input.rois} --roi {wildcards.roi} --out {output} --claim-gpu > {log} 2>&1"


rule train_stage2:
    input:
        stores=train_stores(),
        features=train_features(),
        rois=roi_table,
        dk=stage2_dk_source,
        neck=neck_init_input,
    output:
        model="results/models/{recipe}/{stage2}/roi{roi}/model.pt",
        metrics="results/models/{recipe}/{stage2}/roi{roi}/metrics.csv",
    params:
        data=data_args(),
        model=as_json(config["model"]),
        train=stage_params("stage2"),
        neck=neck_init_arg(),
        out=subpath(output.model, parent=True),
    log:
        "logs/train/{recipe}_{stage2}_roi{roi}.log",
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    conda:
        "../../envs/afo.yaml"
    shell:
        "OMP_NUM_THREADS={threads} afo train {params.data} --model-config {params.model:q} "
        "--train-config {params.train:q} --rois {input.rois} --own-roi {wildcards.roi} "
        "--dark-knowledge {input.dk} --target-mode helpers {params.neck} --out {params.out} --claim-gpu > {log} 2>&1"


rule train_nodk:
    input:
        stores=train_stores(),
        features=train_features(),
        rois=roi_table,
        neck=neck_init_input,
    output:
        model="results/models/{recipe}/nodk/roi{roi}/model.pt",
        metrics="results/models/{recipe}/nodk/roi{roi}/metrics.csv",
    params:
        data=data_args(),
        model=as_json(config["model"]),
        train=stage_params("stage2"),
        neck=neck_init_arg(),
        out=subpath(output.model, parent=True),
    log:
        "logs/train/{recipe}_nodk_roi{roi}.log",
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    conda:
        "../../envs/afo.yaml"
    shell:
        "OMP_NUM_THREADS={threads} afo train {params.data} --model-config {params.model:q} "
        "--train-config {params.train:q} --rois {input.rois} --own-roi {wildcards.roi} --target-mode gt "
        "{params.neck} --out {params.out} --claim-gpu > {log} 2>&1"


rule train_stage3:
    input:
        stores=train_stores(),
        features=train_features(),
        rois=roi_table,
        dk=stage3_dk,
        neck=neck_init_input,
    output:
        model="results/models/{recipe}/stage3/model.pt",
        metrics="results/models/{recipe}/stage3/metrics.csv",
    params:
        data=data_args(),
        model=as_json(config["model"]),
        train=stage_params("stage3"),
        neck=neck_init_arg(),
        out=subpath(output.model, parent=True),
    log:
        "logs/train/{recipe}_stage3.log",
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    conda:
        "../../envs/afo.yaml"
    shell:
        "OMP_NUM_THREADS={threads} afo train {params.data} --model-config {params.model:q} "
        "--train-config {params.train:q} --rois {input.rois} --dark-knowledge {input.dk} --target-mode gt+dk "
        "{params.neck} --out {params.out} --claim-gpu > {log} 2>&1"
