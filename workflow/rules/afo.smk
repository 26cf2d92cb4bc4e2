# The All-for-One recipe (paper 3.2): stage 1 per ROI -> dark knowledge -> stage 2 per ROI (helpers distilled)
# -> [S2+1] -> stage 3 all-ROI model with ground truth and dark knowledge, soup of its top-k checkpoints.
# Every training rule is train_stage0 (train.smk) with its own inputs and params.


use rule train_stage0 as train_stage1 with:
    input:
        stores=stores(),
        features=feature_caches(),
        rois=roi_table,
        neck=neck_init_input,
    output:
        model="results/models/{recipe}/stage1/roi{roi}/model.pt",
        metrics="results/models/{recipe}/stage1/roi{roi}/metrics.csv",
    log:
        "logs/train/{recipe}_stage1_roi{roi}.log",
    params:
        model=config["model"],
        train=stage_params("stage1"),
        roi="{roi}",
        own_roi=None,
        target_mode="gt",
        backbone=online_backbone(),  # backbone.cache none: the job runs the backbone itself


use rule train_stage0 as train_stage2 with:
    input:
        stores=stores(),
        features=feature_caches(),
        rois=roi_table,
        dk=stage2_dk_source,
        neck=neck_init_input,
    output:
        model="results/models/{recipe}/{stage2}/roi{roi}/model.pt",
        metrics="results/models/{recipe}/{stage2}/roi{roi}/metrics.csv",
    log:
        "logs/train/{recipe}_{stage2}_roi{roi}.log",
    params:
        model=config["model"],
        train=stage_params("stage2"),
        roi=None,
        own_roi="{roi}",
        target_mode="helpers",
        backbone=online_backbone(),  # backbone.cache none: the job runs the backbone itself


use rule train_stage0 as train_nodk with:
    input:
        stores=stores(),
        features=feature_caches(),
        rois=roi_table,
        neck=neck_init_input,
    output:
        model="results/models/{recipe}/nodk/roi{roi}/model.pt",
        metrics="results/models/{recipe}/nodk/roi{roi}/metrics.csv",
    log:
        "logs/train/{recipe}_nodk_roi{roi}.log",
    params:
        model=config["model"],
        train=stage_params("stage2"),
        roi=None,
        own_roi="{roi}",
        target_mode="gt",
        backbone=online_backbone(),  # backbone.cache none: the job runs the backbone itself


use rule train_stage0 as train_stage3 with:
    input:
        stores=stores(),
        features=feature_caches(),
        rois=roi_table,
        dk=stage3_dk,
        neck=neck_init_input,
    output:
        model="results/models/{recipe}/stage3/model.pt",
        metrics="results/models/{recipe}/stage3/metrics.csv",
    log:
        "logs/train/{recipe}_stage3.log",
    params:
        model=config["model"],
        train=stage_params("stage3"),
        roi=None,
        own_roi=None,
        target_mode="gt+dk",
        backbone=online_backbone(),  # backbone.cache none: the job runs the backbone itself


rule dark_knowledge:
    input:
        model="results/models/{recipe}/{stage}/roi{roi}/model.pt",
        stores=stores(),
        features=feature_caches(),
        rois=roi_table,
    output:
        "results/models/{recipe}/{stage}/roi{roi}/dk.h5",
    log:
        "logs/dk/{recipe}_{stage}_roi{roi}.log",
    wildcard_constraints:
        stage="stage1|stage2|stage2plus",
    conda:
        "../../envs/afo.yaml"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    params:
        splits=["train", "val"],
        roi="{roi}",
        dtype="float16",
        backbone=online_backbone(),  # backbone.cache none: the job runs the backbone itself
    script:
        "../scripts/predict.py"
