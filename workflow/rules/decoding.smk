# Brain decoding by image retrieval (paper 4.5, Figures 7-9), from the models' prediction files: retrieval.csv
# per model and the retrieval figures.


rule decode:
    input:
        predictions=evaluation_predictions,
        rois=evaluation_rois,
        stores=stores(),
    output:
        table=report(
            "results/decoding/{name}/retrieval.csv",
            caption="../report/retrieval.rst",
            category="4. Decoding",
            subcategory="{name}",
        ),
        figures=report(
            directory("results/decoding/{name}/retrievals"),
            patterns=["{subject}.png"],
            caption="../report/retrievals.rst",
            category="4. Decoding",
            subcategory="{name}",
        ),
    log:
        "logs/decoding/{name}.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=TRAIN_MEM_MB,
    params:
        roi_set=AFO["dataset_roi_set"],
        examples=config["decoding"]["examples"],
        top_k=config["decoding"]["top_k"],
    script:
        "../scripts/decode.py"
