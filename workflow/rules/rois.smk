# ROI tables: veROIs from the stage-0 head weights, the datasets' own labels, and randROI.


checkpoint veroi:
    input:
        models=STAGE0_MODELS,
    output:
        table="results/rois/veroi.csv",
        clustering="results/rois/veroi.npz",
    params:
        veroi=as_json(AFO["veroi"]),
        seed=config["train"]["seed"],
    log:
        "logs/rois/veroi.log",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo rois veroi --model {input.models} --options {params.veroi:q} --seed {params.seed} "
        "--out {output.table} --clustering {output.clustering} > {log} 2>&1"


checkpoint dataset_rois:
    input:
        stores=train_stores(),
    output:
        "results/rois/dataset.csv",
    params:
        data=" ".join(f"--store {d}=results/prepared/{d}.h5" for d in TRAIN_DATASETS),
        roi_set=AFO["dataset_roi_set"],
    log:
        "logs/rois/dataset.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo rois dataset {params.data} --roi-set {params.roi_set} --out {output} > {log} 2>&1"


rule random_rois:
    input:
        "results/rois/veroi.csv",
    output:
        "results/rois/random.csv",
    params:
        seed=config["train"]["seed"],
    log:
        "logs/rois/random.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo rois random --like {input} --seed {params.seed} --out {output} > {log} 2>&1"
