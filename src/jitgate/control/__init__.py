"""The control-plane HTTP adapter (FastAPI): routes, wire schemas, problems, caller auth."""
