"""Hostile-input fuzz suites (the full runs are marked ``fuzz``: ``make test-fuzz``)."""
