"""`hydra/launcher=slurm` and `hydra/launcher=submitit_local`: submitit's launchers with lmlab's checks.

Hydra only instantiates launchers defined under the `hydra_plugins` package, hence this package.
"""
