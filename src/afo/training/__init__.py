"""Training: data for a job, the Lightning task, model files and the greedy soup."""
