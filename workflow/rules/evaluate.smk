# Per-voxel scores of every model's predictions (predict.smk): voxels.csv, summary.csv, the ablation table with the
# recipe comparison as its view, the RetinaMap against NSD's measured pRF maps, and the checks against the synthetic
# brain's ground truth, and the test-only holdouts scored out of distribution.


rule evaluate:
    input:
        models=evaluation_models,
        predictions=evaluation_predictions,
        rois=evaluation_rois,
        stores=stores(),
        overlap=overlap_input(),
    output:
        voxels="results/encoding/{name}/voxels.csv",
        summary="results/encoding/{name}/summary.csv",
    log:
        "logs/evaluate/{name}.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=TRAIN_MEM_MB,
    params:
        roi_set=AFO["dataset_roi_set"],
        trained_on=overlap_trained_on(),
        visual_angles=VISUAL_ANGLES,
    script:
        "../scripts/evaluate.py"


rule summary_html:
    input:
        "results/encoding/{name}/summary.csv",
    output:
        report(
            "results/encoding/{name}/summary.html",
            caption="../report/summary.rst",
            category="1. Encoding",
            subcategory="{name}",
        ),
    log:
        "logs/evaluate/summary_html_{name}.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        title="Encoding scores: {name}",
        best_of=[],
    script:
        "../scripts/table_html.py"


# Test-only holdouts (NSD-synthetic) scored with the heads of the NSD dataset each names, beside that dataset's
# test scores: in- vs out-of-distribution per subject and ROI.
rule ood:
    input:
        models=evaluation_models,
        predictions=ood_predictions,
        voxels="results/encoding/{name}/voxels.csv",
        rois=evaluation_rois,
        stores=stores(list(OOD)),
    output:
        voxels="results/encoding/{name}/ood_voxels.csv",
        table="results/encoding/{name}/ood.csv",
    log:
        "logs/evaluate/ood_{name}.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=TRAIN_MEM_MB,
    params:
        pairs=OOD,
        roi_set=AFO["dataset_roi_set"],
        visual_angles=VISUAL_ANGLES,
    script:
        "../scripts/ood.py"


use rule summary_html as ood_html with:
    input:
        "results/encoding/{name}/ood.csv",
    output:
        report(
            "results/encoding/{name}/ood.html",
            caption="../report/ood.rst",
            category="1. Encoding",
            subcategory="{name}",
        ),
    log:
        "logs/evaluate/ood_html_{name}.log",
    params:
        title="In- vs out-of-distribution: {name}",
        best_of=[],


rule ablation_table:
    input:
        voxels=voxels_tables(),
        veroi="results/rois/veroi.csv",
    output:
        table=report(
            "results/encoding/ablation_table.csv", caption="../report/ablation_table_csv.rst", category="2. Ablations"
        ),
        html=report(
            "results/encoding/ablation_table.html", caption="../report/ablation_table.rst", category="2. Ablations"
        ),
        comparison="results/encoding/comparison.csv",
    log:
        "logs/evaluate/ablation_table.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        names=EVALUATED,
        # Not sorted: the order of the mapping is the order of the groups and areas in the table.
        area_groups=config["evaluation"]["area_groups"],
    script:
        "../scripts/ablation_table.py"


use rule summary_html as comparison_html with:
    input:
        "results/encoding/comparison.csv",
    output:
        report("results/encoding/comparison.html", caption="../report/comparison.rst", category="1. Encoding"),
    log:
        "logs/evaluate/comparison_html.log",
    params:
        title="Mean test r per dataset and area",
        best_of=EVALUATED,


rule prf_comparison:
    input:
        voxels="results/encoding/{name}/voxels.csv",
        stores=stores(PRF_DATASETS),
    output:
        voxels="results/analysis/prf/{name}.csv",
        rois="results/analysis/prf/{name}_rois.csv",
        figures=report(
            directory("results/figures/{name}/prf"),
            patterns=["{figure}.png"],
            caption="../report/prf.rst",
            category="5. Probing figures",
            subcategory="{name}",
        ),
    log:
        "logs/evaluate/prf_{name}.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        roots=prf_roots(),
        min_r2=config["evaluation"]["prf_min_r2"],
    script:
        "../scripts/prf_comparison.py"


rule synthetic_checks:
    input:
        truth=ground_truth_input(),
        veroi="results/rois/veroi.csv",
        voxels="results/encoding/afo/voxels.csv",
        retrieval="results/decoding/afo/retrieval.csv",
    output:
        json="results/analysis/synthetic_checks.json",
        html=report(
            "results/analysis/synthetic_checks.html",
            caption="../report/synthetic_checks.rst",
            category="6. Synthetic-brain checks",
        ),
    log:
        "logs/evaluate/synthetic_checks.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        ground_truth=SYNTHETIC_TRAIN,
        permutations=config["evaluation"]["null_permutations"],
        seed=config["evaluation"]["null_seed"],
    script:
        "../scripts/synthetic_checks.py"


rule headline:
    input:
        comparison="results/encoding/comparison.csv",
        training="results/models/training.csv",
        retrieval=headline_retrieval(),
        probe=headline_probe(),
        checks=headline_checks(),
        summary=headline_summary(),
    output:
        report("results/headline.html", caption="../report/headline.rst", category="0. At a glance"),
    log:
        "logs/evaluate/headline.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/headline.py"
