# A model's predictions, one rule body: dark knowledge of the recipe's per-ROI models on the training images (read by
# stage 2 and 3, train.smk), and every model's predictions on the val and test images (read by evaluation,
# decoding and the figures).


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


use rule dark_knowledge as predict with:
    input:
        model="results/models/{model_dir}/model.pt",
        stores=stores(),
        features=feature_caches(),
        rois=predict_rois,
    output:
        "results/models/{model_dir}/predictions.h5",
    log:
        "logs/predict/{model_dir}.log",
    params:
        splits=["val", "test"],
        roi=predict_roi,
        dtype="float32",
        backbone=online_backbone(),  # backbone.cache none: the job runs the backbone itself


# A test-only holdout (NSD-synthetic) predicted with the heads of the training dataset it names (heads_of): its
# store and features go under that dataset's name, so the model's subjects heads_of/subjNN predict it.
rule predict_ood:
    input:
        model="results/models/{model_dir}/model.pt",
        store="results/prepared/{holdout}.h5",
        features=ood_features,
        rois=predict_rois,
    output:
        "results/models/{model_dir}/ood_{holdout}.h5",
    log:
        "logs/predict/{model_dir}_ood_{holdout}.log",
    conda:
        "../../envs/afo.yaml"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    params:
        heads_of=ood_heads_of,
        roi=predict_roi,
        backbone=online_backbone(),  # backbone.cache none: the job runs the backbone itself
    script:
        "../scripts/predict_ood.py"
