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
