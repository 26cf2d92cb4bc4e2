# Per-voxel scores of every model (voxels.csv, summary.csv) and the recipe comparison table.


rule evaluate:
    input:
        models=evaluation_models,
        rois=evaluation_rois,
        stores=train_stores(),
        features=train_features(),
    output:
        voxels="results/encoding/{name}/voxels.csv",
        summary="results/encoding/{name}/summary.csv",
    params:
        data=data_args(),
        models=evaluation_model_args,
        roi_set=AFO["dataset_roi_set"],
        out=subpath(output.voxels, parent=True),
    log:
        "logs/evaluate/{name}.log",
    threads: 1
    resources:
        mem_mb=TRAIN_MEM_MB,
    conda:
        "../../envs/afo.yaml"
    shell:
        "OMP_NUM_THREADS={threads} afo evaluate {params.data} {params.models} --rois {input.rois} "
        "--dataset-roi-set {params.roi_set} --out-dir {params.out} > {log} 2>&1"


rule compare:
    input:
        expand("results/encoding/{name}/voxels.csv", name=EVALUATED),
    output:
        "results/encoding/comparison.csv",
    params:
        names=EVALUATED,
    log:
        "logs/evaluate/comparison.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo compare --names {params.names} --voxels {input} --out {output} > {log} 2>&1"
