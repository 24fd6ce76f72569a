"""The Hydra boundary: the only code in the package that imports Hydra or OmegaConf.

compose.py (schemas, composition, a run's saved config, one-line errors), quoting.py (free text on the command
line), rundirs.py (the run-dir resolvers), startup.py (importing torch), sweep_callback.py (the sweep report at the
end of a multirun), and one module per entry point holding its main: run.py, prepare.py, sample.py, export.py,
eval.py.
"""
