"""Sweeps: reports over a multirun directory, and the Hydra callback that writes them."""
