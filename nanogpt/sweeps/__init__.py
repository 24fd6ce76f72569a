"""Sweeps: compute budgets and the depth dial (budgets.py), Chinchilla's IsoFLOP fit (isoflop.py), and the report
of a sweep's jobs (report.py: `python -m nanogpt.sweeps <sweep dir>`)."""
