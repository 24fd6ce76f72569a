"""Sweeps: compute budgets and the depth dial (budgets.py), the report of a sweep's jobs (report.py:
`python -m nanogpt.sweeps <sweep dir>`), and its scaling section (scaling_report.py): Chinchilla's approach 2
(isoflop.py) and approach 3 (approach3.py) with bootstrap intervals (bootstrap.py), drawn by scaling_plots.py."""
