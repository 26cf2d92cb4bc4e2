"""Workflow-level analyses on top of trained models and evaluation tables (issue 6).

Each module turns workflow files (prepared stores, feature caches, model files, voxels.csv, ROI tables) into
the tables and figures of the report, using the array-level science modules of the package
(:mod:`afo.metrics`, :mod:`afo.probe`, :mod:`afo.decode`, :mod:`afo.plots`, :mod:`afo.brainmaps`):

- :mod:`afo.analysis.ablation`: the ablation table in the form of the paper's Tables 2 and 3;
- :mod:`afo.analysis.probing`: the linear-probing benchmark (paper Figure 1) of timm backbones and of our
  trained backbone + conv blocks, on training and holdout datasets;
- :mod:`afo.analysis.decoding`: retrieval accuracy per subject and ROI, retrieval figures, and ranking a user's
  own candidate images for a user's own response pattern (paper 4.5, Figures 7-9);
- :mod:`afo.analysis.figures`: RetinaMap, LayerSelector, brain maps (PNG, and NIfTI where a subject's store
  holds a volume affine), veROI dendrogram, per-ROI encoding and retrieval scores (Figures 4-6, 8);
- :mod:`afo.analysis.synthetic_checks`: on the synthetic brain, veROI vs simulated areas (adjusted Rand index
  against a permutation null), decoding accuracy against chance, learned vs true receptive-field centres;
- :mod:`afo.analysis.tables`: CSV/HTML writing shared by the above.
"""
