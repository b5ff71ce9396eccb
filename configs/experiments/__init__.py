"""Experiment configs: each file's ``get_config()`` is one launcher's defaults (see README.md)."""
