"""The fault suite: kill -9, outages, two workers and a fuzz corpus against real services.

Each module is a script (``python -m tests.faults.<name>``) that prints what it
published, what was stored, and every loss or double count, and exits non-zero
on any. ``make faults`` runs them all; tests/faults/test_faults_subset.py runs a
small slice in ``make test``. See docs/operations.md, "Fault suite".
"""
