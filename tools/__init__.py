"""Tools that convert and check the models (run as modules: python -m tools.NAME)."""
