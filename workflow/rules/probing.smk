# Linear-probing benchmark (paper Figure 1): frozen extractors -> pooled maps -> PCA -> per-voxel ridge, on every
# dataset (train and holdout), and its summary table and figure.


rule probe:
    input:
        store="results/prepared/{dataset}.h5",
        features=probe_features,
        model=probe_model,
        overlap=overlap_input(),
    output:
        "results/probing/{extractor}/{dataset}.csv",
    log:
        "logs/probing/{extractor}_{dataset}.log",
    conda:
        "../../envs/afo.yaml"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    params:
        spec=probe_spec,
        settings=probe_settings(),
        role=dataset_role,
        roi_set=AFO["dataset_roi_set"],
        trained_on=overlap_trained_on(),
        backbone=probe_backbone,  # backbone.cache none: a backbone/model extractor runs the backbone itself
    script:
        "../scripts/probe.py"


rule probe_report:
    input:
        probe_tables(),
    output:
        table=report("results/probing/probe.csv", caption="../report/probe_csv.rst", category="3. Linear probing"),
        summary=report(
            "results/probing/probe_summary.html", caption="../report/probe_summary.rst", category="3. Linear probing"
        ),
        figure=report(
            "results/probing/probe_violins.png", caption="../report/probe_violins.rst", category="3. Linear probing"
        ),
    log:
        "logs/probing/report.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/probe_report.py"
