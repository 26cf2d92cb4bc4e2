# ROI tables: veROIs from the stage-0 head weights, the datasets' own labels, and randROI.


checkpoint veroi:
    input:
        models=STAGE0_MODELS,
    output:
        table="results/rois/veroi.csv",
        clustering="results/rois/veroi.npz",
    params:
        veroi=AFO["veroi"],
    log:
        "logs/rois/veroi.log",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/afo.yaml"
    script:
        "../scripts/veroi.py"


checkpoint dataset_rois:
    input:
        stores=stores(),
    output:
        "results/rois/dataset.csv",
    params:
        roi_set=AFO["dataset_roi_set"],
    log:
        "logs/rois/dataset.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/afo.yaml"
    script:
        "../scripts/dataset_rois.py"


rule random_rois:
    input:
        "results/rois/veroi.csv",
    output:
        "results/rois/random.csv",
    params:
        seed=AFO["randroi_seed"],
    log:
        "logs/rois/random.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/afo.yaml"
    script:
        "../scripts/random_rois.py"
