# Raw data -> prepared store: the synthetic brain and every configured dataset.


rule simulate:
    output:
        directory("resources/synthetic"),
    params:
        seed=config["simulate"]["seed"],
        options=config["simulate"]["options"],
    log:
        "logs/simulate.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/afo.yaml"
    script:
        "../scripts/simulate.py"


rule prepare:
    input:
        prepare_input,
    output:
        "results/prepared/{dataset}.h5",
    params:
        dataset=dataset_params,
        image_size=config["prepare"]["image_size"],
        manifest=dataset_manifest,
    log:
        "logs/prepare/{dataset}.log",
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        "../../envs/afo.yaml"
    script:
        "../scripts/prepare.py"


# Images shared between datasets (by source name or perceptual hash); training never waits for it, evaluation and
# probing read it to leave out test images a training dataset trained on.
rule overlap:
    input:
        stores=stores(ALL_DATASETS),
    output:
        csv="results/data/overlap.csv",
        html=report("results/data/overlap.html", caption="../report/overlap.rst", category="7. Data"),
    params:
        max_distance=OVERLAP["max_distance"],
        min_correlation=OVERLAP["min_correlation"],
        trained_on=TRAIN_DATASETS,
        exclude=OVERLAP["exclude"],
    log:
        "logs/overlap.log",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/afo.yaml"
    script:
        "../scripts/overlap.py"
