# Analyses of the evaluated models (paper Figures 1, 4-9, Tables 2-3, section 4.5): the ablation table, the
# linear-probing benchmark, brain decoding, probing figures, the synthetic-brain checks, and the HTML renderings
# of every table. Every figure and table is a report item (snakemake --report results/report.html).
from afo.analysis.workflow import AnalysisPlan

# File lists and arguments of these rules (src/afo/analysis/workflow.py); unknown model names fail here.
PLAN = AnalysisPlan(config, EVALUATED, SINGLE, evaluation_rois)


wildcard_constraints:
    extractor=PLAN.extractor_pattern(),


# -- the ablation table (paper Tables 2 and 3) ---------------------------------------------------------


rule ablation_table:
    input:
        voxels=PLAN.voxels_files(),
        veroi="results/rois/veroi.csv",
    output:
        table=report("results/encoding/ablation_table.csv", caption="../report/ablation_table_csv.rst", category="2. Ablations"),
        html=report("results/encoding/ablation_table.html", caption="../report/ablation_table.rst", category="2. Ablations"),
    params:
        voxels=PLAN.voxels_args(),
        # Not sorted: the order of the mapping is the order of the groups and areas in the table.
        groups=json.dumps(config["evaluation"]["area_groups"]),
    log:
        "logs/analysis/ablation_table.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo ablation-table {params.voxels} --veroi {input.veroi} --area-groups {params.groups:q} "
        "--out {output.table} --html {output.html} > {log} 2>&1"


rule encoding_table_html:
    input:
        "results/encoding/{name}/summary.csv",
    output:
        report("results/encoding/{name}/summary.html", caption="../report/summary.rst", category="1. Encoding", subcategory="{name}"),
    log:
        "logs/analysis/summary_html_{name}.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo table-html --csv {input} --out {output} --title 'Encoding scores: {wildcards.name}' > {log} 2>&1"


rule comparison_html:
    input:
        "results/encoding/comparison.csv",
    output:
        report("results/encoding/comparison.html", caption="../report/comparison.rst", category="1. Encoding"),
    params:
        best=as_json(EVALUATED),
    log:
        "logs/analysis/comparison_html.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo table-html --csv {input} --out {output} --title 'Mean test r per dataset and area' "
        "--best-of {params.best:q} > {log} 2>&1"


# -- linear probing (paper Figure 1) -------------------------------------------------------------------


rule probe:
    input:
        store="results/prepared/{dataset}.h5",
        features=PLAN.probe_features,
        model=PLAN.probe_model,
    output:
        "results/probing/{extractor}/{dataset}.csv",
    params:
        spec=PLAN.probe_spec,
        settings=PLAN.probe_settings(),
        batch_size=config["probing"]["batch_size"],
        role=PLAN.dataset_role,
        roi_set=AFO["dataset_roi_set"],
        inputs=PLAN.probe_input_args,
    log:
        "logs/probing/{extractor}_{dataset}.log",
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    conda:
        "../../envs/afo.yaml"
    shell:
        "OMP_NUM_THREADS={threads} afo probe --extractor {wildcards.extractor} --spec {params.spec:q} "
        "--dataset {wildcards.dataset} --role {params.role} --store {input.store} {params.inputs} "
        "--settings {params.settings:q} --batch-size {params.batch_size} --roi-set {params.roi_set} --out {output} "
        "--claim-gpu > {log} 2>&1"


rule probe_report:
    input:
        PLAN.probe_tables(),
    output:
        table=report("results/probing/probe.csv", caption="../report/probe_csv.rst", category="3. Linear probing"),
        summary=report("results/probing/probe_summary.html", caption="../report/probe_summary.rst", category="3. Linear probing"),
        figure=report("results/probing/probe_violins.png", caption="../report/probe_violins.rst", category="3. Linear probing"),
    log:
        "logs/probing/report.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo probe-report --tables {input} --out {output.table} --summary {output.summary} "
        "--figure {output.figure} > {log} 2>&1"


# -- brain decoding (paper 4.5, Figures 7-9) -----------------------------------------------------------


rule decode:
    input:
        models=evaluation_models,
        rois=evaluation_rois,
        stores=train_stores(),
        features=train_features(),
    output:
        table=report("results/decoding/{name}/retrieval.csv", caption="../report/retrieval.rst", category="4. Decoding", subcategory="{name}"),
        figures=report(directory("results/decoding/{name}/retrievals"), patterns=["{subject}.png"], caption="../report/retrievals.rst",
                       category="4. Decoding", subcategory="{name}"),
    params:
        data=data_args(),
        models=evaluation_model_args,
        roi_set=AFO["dataset_roi_set"],
        examples=config["decoding"]["examples"],
        top_k=config["decoding"]["top_k"],
    log:
        "logs/decoding/{name}.log",
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=TRAIN_MEM_MB,
    conda:
        "../../envs/afo.yaml"
    shell:
        "OMP_NUM_THREADS={threads} afo retrieval {params.data} {params.models} --rois {input.rois} "
        "--dataset-roi-set {params.roi_set} --out {output.table} --figures {output.figures} "
        "--examples {params.examples} --top-k {params.top_k} --claim-gpu > {log} 2>&1"


rule roi_scores:
    input:
        voxels="results/encoding/{name}/voxels.csv",
        retrieval="results/decoding/{name}/retrieval.csv",
    output:
        report(directory("results/figures/{name}/roi_scores"), patterns=["{subject}.png"], caption="../report/roi_scores.rst",
               category="5. Probing figures", subcategory="{name}"),
    params:
        roi_set=PLAN.model_roi_set,
    log:
        "logs/figures/{name}_roi_scores.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo roi-scores --voxels {input.voxels} --retrieval {input.retrieval} --roi-set {params.roi_set} "
        "--name {wildcards.name} --out-dir {output} > {log} 2>&1"


# -- probing figures (paper Figures 4-6) and brain maps ------------------------------------------------


rule model_figures:
    input:
        voxels="results/encoding/{name}/voxels.csv",
        stores=train_stores(),
        truth=PLAN.ground_truth_input(),
    output:
        retina=report(directory("results/figures/{name}/retinamap"), patterns=["{subject}.png"], caption="../report/retinamap.rst",
                      category="5. Probing figures", subcategory="{name}"),
        layers=report(directory("results/figures/{name}/layerselector"), patterns=["{subject}.png"], caption="../report/layerselector.rst",
                      category="5. Probing figures", subcategory="{name}"),
        brain=report(directory("results/figures/{name}/brainmaps"), patterns=["{subject}.{map}.png"], caption="../report/brainmaps.rst",
                     category="5. Probing figures", subcategory="{name}"),
        nifti=directory("results/brainmaps/{name}"),
    params:
        stores=PLAN.train_store_args(),
        truth=PLAN.ground_truth_args(),
    log:
        "logs/figures/{name}.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo figures --voxels {input.voxels} --name {wildcards.name} {params.stores} {params.truth} "
        "--retina-map {output.retina} --layer-selector {output.layers} --brain-maps {output.brain} "
        "--nifti {output.nifti} > {log} 2>&1"


rule dendrogram:
    input:
        "results/rois/veroi.npz",
    output:
        report("results/figures/veroi_dendrogram.png", caption="../report/dendrogram.rst", category="5. Probing figures"),
    log:
        "logs/figures/dendrogram.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo dendrogram --clustering {input} --out {output} > {log} 2>&1"


# -- checks on the synthetic brain ---------------------------------------------------------------------


rule synthetic_checks:
    input:
        truth=PLAN.ground_truth_input(),
        veroi="results/rois/veroi.csv",
        voxels="results/encoding/afo/voxels.csv",
        retrieval="results/decoding/afo/retrieval.csv",
    output:
        json="results/analysis/synthetic_checks.json",
        html=report("results/analysis/synthetic_checks.html", caption="../report/synthetic_checks.rst", category="6. Synthetic-brain checks"),
    params:
        truth=PLAN.ground_truth_args(),
        permutations=config["evaluation"]["null_permutations"],
        seed=config["train"]["seed"],
    log:
        "logs/analysis/synthetic_checks.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/afo.yaml"
    shell:
        "afo synthetic-checks {params.truth} --veroi {input.veroi} --voxels {input.voxels} --retrieval {input.retrieval} "
        "--name afo --permutations {params.permutations} --seed {params.seed} --out {output.json} "
        "--html {output.html} > {log} 2>&1"


# -- what `rule all` asks for ---------------------------------------------------------------------------

ANALYSIS_TARGETS += PLAN.targets()
