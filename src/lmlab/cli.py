"""`lmlab <command> [hydra overrides]`: dispatch to the thin Hydra entry points.

Each command is also `python -m lmlab.<command>`; every Hydra flag (-m, --cfg job, --help, -cn,
--config-dir, +key=value) passes through unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

COMMANDS = {
    "train": "Fit a model (then test and export the best checkpoint).",
    "evaluate": "Score a checkpoint on a split (reproduces the train-time test metrics).",
    "predict": "Write one JSON line of predictions per row of an input file.",
    "generate": "Print a causal LM's continuation of a prompt (a checkpoint or an export dir).",
    "report": "Summarise a multirun sweep dir: summary.csv/.md, a plot, the best override line.",
    "reproduce": "Re-run a finished run from its run dir and compare metrics and environment.",
}
PLAIN_COMMANDS = {"report": "lmlab.sweep.report", "reproduce": "lmlab.reproduce"}  # not Hydra apps

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
    if command in PLAIN_COMMANDS:
        importlib.import_module(PLAIN_COMMANDS[command]).main(rest)
        return
    module = importlib.import_module(f"lmlab.{command}")
    # Lightning's DDP launcher starts each worker as `python -m <__main__.__spec__.name> <sys.argv[1:]>`
    # (or `python <sys.argv[0]> ...`): point both at the command's module so workers run the same command.
    sys.argv = [module.__file__, *rest]
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.__spec__ = importlib.util.find_spec(f"lmlab.{command}")
    module.main()
