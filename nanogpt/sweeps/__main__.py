"""python -m nanogpt.sweeps multirun/<date>/<time>: write (or rewrite) a sweep's report."""

from nanogpt.sweeps.report import main

main()
