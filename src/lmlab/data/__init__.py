"""Data: one datamodule base (load, cached tokenization, collate, sampling) and per-task processors."""
