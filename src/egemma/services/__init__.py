"""Orchestration between the API and engines/store/cache; no FastAPI imports."""
