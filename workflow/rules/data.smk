# Raw data -> prepared store: the synthetic brain and every configured dataset.


rule simulate:
    output:
        directory("resources/synthetic"),
    params:
        seed=config["simulate"]["seed"],
        options=as_json(config["simulate"]["options"]),
    log:
        "logs/simulate.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo simulate --out {output} --seed {params.seed} --options {params.options:q} > {log} 2>&1"


rule prepare:
    input:
        prepare_input,
    output:
        "results/prepared/{dataset}.h5",
    params:
        format=dataset_format,
        root=dataset_root,
        image_size=config["prepare"]["image_size"],
        options=dataset_options,
    log:
        "logs/prepare/{dataset}.log",
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo prepare {params.format} --root {params.root:q} --out {output} "
        "--image-size {params.image_size} --options {params.options:q} > {log} 2>&1"
