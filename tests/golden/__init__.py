"""Reference outputs of the tiny CLIPs (see ``make.py``)."""
