"""The reward model served over HTTP (LitServe): `python -m mars.serve model=<export or run folder>`."""
