"""ROIs of the recipe: veROIs (k-means + Ward on stage-0 head weights), a dataset's own ROIs, and randROI."""
