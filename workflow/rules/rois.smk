# ROI tables: veROIs from the stage-0 head weights, the datasets' own labels, and randROI.


checkpoint veroi:
    input:
        models=STAGE0_MODELS,
    output:
        table="results/rois/veroi.csv",
        clustering="results/rois/veroi.npz",
    log:
        "logs/rois/veroi.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        veroi=AFO["veroi"],
    script:
        "../scripts/veroi.py"


checkpoint dataset_rois:
    input:
        stores=stores(),
    output:
        "results/rois/dataset.csv",
    log:
        "logs/rois/dataset.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        roi_set=AFO["dataset_roi_set"],
    script:
        "../scripts/dataset_rois.py"


rule random_rois:
    input:
        "results/rois/veroi.csv",
    output:
        "results/rois/random.csv",
    log:
        "logs/rois/random.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        seed=AFO["randroi_seed"],
    script:
        "../scripts/random_rois.py"
