# Probing figures (paper Figures 4-6, 8): RetinaMap, LayerSelector, brain maps (and maps in each subject's own space:
# NIfTI, MGH on fsaverage, CIFTI dscalar), per-ROI scores, the veROI dendrogram, and
# interactive viewer pages per subject (plotly, self-contained HTML).


rule model_figures:
    input:
        voxels="results/encoding/{name}/voxels.csv",
        stores=stores(),
        truth=ground_truth_input(),
    output:
        retina=report(
            directory("results/figures/{name}/retinamap"),
            patterns=["{subject}.png"],
            caption="../report/retinamap.rst",
            category="5. Probing figures",
            subcategory="{name}",
        ),
        layers=report(
            directory("results/figures/{name}/layerselector"),
            patterns=["{subject}.png"],
            caption="../report/layerselector.rst",
            category="5. Probing figures",
            subcategory="{name}",
        ),
        brain=report(
            directory("results/figures/{name}/brainmaps"),
            patterns=["{subject}.{map}.png"],
            caption="../report/brainmaps.rst",
            category="5. Probing figures",
            subcategory="{name}",
        ),
        nifti=directory("results/brainmaps/{name}"),
    log:
        "logs/figures/{name}.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        ground_truth=SYNTHETIC,
        visual_angles=VISUAL_ANGLES,
    script:
        "../scripts/model_figures.py"


rule roi_scores:
    input:
        voxels="results/encoding/{name}/voxels.csv",
        retrieval="results/decoding/{name}/retrieval.csv",
    output:
        report(
            directory("results/figures/{name}/roi_scores"),
            patterns=["{subject}.png"],
            caption="../report/roi_scores.rst",
            category="5. Probing figures",
            subcategory="{name}",
        ),
    log:
        "logs/figures/{name}_roi_scores.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        roi_set=model_roi_set,
    script:
        "../scripts/roi_scores.py"


rule dendrogram:
    input:
        "results/rois/veroi.npz",
    output:
        report(
            "results/figures/veroi_dendrogram.png", caption="../report/dendrogram.rst", category="5. Probing figures"
        ),
    log:
        "logs/figures/dendrogram.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/dendrogram.py"


rule viewer:
    input:
        voxels="results/encoding/{name}/voxels.csv",
        stores=stores(),
    output:
        report(
            directory("results/viewer/{name}"),
            patterns=["{subject}.html"],
            caption="../report/viewer.rst",
            category="5. Probing figures",
            subcategory="{name}",
        ),
    log:
        "logs/figures/{name}_viewer.log",
    conda:
        "../../envs/afo.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        surfaces=viewer_surfaces(),
    script:
        "../scripts/viewer.py"
