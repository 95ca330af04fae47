"""The model registry: configured, loaded and swapped-out models within a memory budget."""
