"""lmlab's Optuna sweeper as a Hydra plugin (Hydra only instantiates plugins from the hydra_plugins package).

The plugin is a thin shell: the search itself lives in lmlab.sweep.optuna_sweeper and is imported when a
sweep starts, so Hydra's plugin scan on every run stays cheap (no optuna import).
"""
