"""The ``microfacs`` command line tool (see ``microfacs --help`` and ``microfacs_cli/main.py``)."""
