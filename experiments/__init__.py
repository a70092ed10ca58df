"""Experiments that were measured and not shipped (numbers in the model cards' lab notebooks). They use the
recipes' code (``training``), never the other way round; run them as modules: ``python -m experiments.NAME``."""
