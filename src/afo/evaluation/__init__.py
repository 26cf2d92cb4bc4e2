"""Evaluation: predicted vs measured responses, per-voxel scores, the ablation/comparison tables, synthetic checks."""
