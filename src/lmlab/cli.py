"""`lmlab <command> [hydra overrides]`: dispatch to the thin Hydra entry points.

Each command is also `python -m lmlab.<command>`; every Hydra flag (-m, --cfg job, --help, -cn,
--config-dir, +key=value) passes through unchanged.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "Fit a model (then test and export the best checkpoint).",
    "evaluate": "Score a checkpoint on a split (reproduces the train-time test metrics).",
    "predict": "Write one JSON line of predictions per row of an input file.",
}

USAGE = "usage: lmlab <command> [hydra overrides | --help | --cfg job | -m ...]\n\ncommands:\n" + "\n".join(
    f"  {name:<10} {text}" for name, text in COMMANDS.items()
)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"lmlab: unknown command {command!r}.\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(f"lmlab.{command}")
    # argv[0] is the module's file so that Lightning's DDP launcher, which re-runs sys.argv, starts the
    # same command in its worker processes.
    sys.argv = [module.__file__, *rest]
    module.main()
