"""MicroFACS: face, Action Unit and expression analysis served over HTTP."""

__version__ = "0.1.0"
