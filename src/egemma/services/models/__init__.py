"""The model registry: which models are configured, loaded or swapped out, within a memory budget."""
