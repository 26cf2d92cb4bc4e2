# All-ROI models trained on every voxel of every training subject: the stage-0 seeds (the first is also the
# naivemix baseline) and the TopyNeck ablations of the config; then the All-for-One recipe (paper 3.2): stage 1 per
# ROI -> dark knowledge (predict.smk) -> stage 2 per ROI (helpers distilled) -> [S2+1] -> stage 3 all-ROI model with
# ground truth and dark knowledge, soup of its top-k checkpoints. Every training rule is train_stage0
# with other inputs and params (`use rule ... with:`); each claims compute.train_devices GPUs
# (gpu=N; default 1) and trains with DDP on them, with N x train_threads threads and N x train_mem_mb memory
# (each rank is one process with its own data loading). The device count is not a param: it reruns nothing.

TRAIN_DEVICES = COMPUTE["train_devices"]


rule train_stage0:
    input:
        stores=stores(),
        features=feature_caches(),
    output:
        model="results/models/stage0/seed{seed}/model.pt",
        metrics="results/models/stage0/seed{seed}/metrics.csv",
    log:
        "logs/train/stage0_seed{seed}.log",
    conda:
        "../../envs/afo.yaml"
    threads: TRAIN_THREADS * TRAIN_DEVICES
    resources:
        gpu=TRAIN_DEVICES,
        mem_mb=TRAIN_MEM_MB * TRAIN_DEVICES,
    params:
        model=config["model"],
        train=stage0_params,
        roi=None,
        own_roi=None,
        target_mode="gt",
        backbone=online_backbone(),  # backbone.cache none: the job runs the backbone itself
    script:
        "../scripts/train.py"


use rule train_stage0 as train_ablation with:
    output:
        model="results/models/ablation/{ablation}/model.pt",
        metrics="results/models/ablation/{ablation}/metrics.csv",
    log:
        "logs/train/ablation_{ablation}.log",
    params:
        model=ablation_model,
        train=ablation_train,
        roi=None,
        own_roi=None,
        target_mode="gt",
        backbone=online_backbone(),  # backbone.cache none: the job runs the backbone itself


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


# How every training job of the run ended (stop reason, epochs, best epoch, steps): models that stopped at their
# epoch cap did not converge, and the front page lists them.
rule training_summary:
    input:
        trained_models,
    output:
        "results/models/training.csv",
    log:
        "logs/train/training_summary.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/training_summary.py"
