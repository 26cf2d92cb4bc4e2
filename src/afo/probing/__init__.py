"""Linear probing (paper Figure 1): frozen feature extractors -> PCA -> per-voxel ridge, and its report."""
