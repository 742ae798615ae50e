"""Analysis commands run as modules: ``python -m trainers.analysis.<name>``."""
