"""Test set-up lives in shared/pytest_plugin.py (loaded via pyproject.toml's addopts) so that it
applies to the notebooks in the chapter folders too, not only to tests/."""
