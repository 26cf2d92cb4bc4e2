# Raw data -> prepared store: the synthetic brain and every configured dataset.


rule simulate:
    output:
        directory("resources/synthetic"),
    log:
        "logs/simulate.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        seed=config["simulate"]["seed"],
        options=config["simulate"]["options"],
    script:
        "../scripts/simulate.py"


rule prepare:
    input:
        prepare_input,
    output:
        "results/prepared/{dataset}.h5",
    log:
        "logs/prepare/{dataset}.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        dataset=dataset_params,
        image_size=config["prepare"]["image_size"],
        manifest=dataset_manifest,
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
    log:
        "logs/overlap.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        max_distance=OVERLAP["max_distance"],
        min_correlation=OVERLAP["min_correlation"],
        trained_on=TRAIN_DATASETS,
        exclude=OVERLAP["exclude"],
    script:
        "../scripts/overlap.py"
