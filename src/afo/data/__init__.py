"""Datasets: adapters from published formats to the prepared store, and the store itself."""
