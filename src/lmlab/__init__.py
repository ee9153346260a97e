"""lmlab: config-composed experiments for transformer language models on PyTorch Lightning.

Importing this package is cheap on purpose (no torch/lightning/transformers): the CLI must print and
validate configs in well under a second.
"""

__version__ = "0.1.0"
