"""The `dnnlab` command: `train` and `lr-find` are Hydra apps; the others take plain arguments."""
from __future__ import annotations

import importlib
import sys

# command → "module:function"; each function takes the remaining argv and returns an exit code.
COMMANDS = {
    "train": "dnnlab.cli:train_main",
    "list": "dnnlab.catalog:main",
    "report": "dnnlab.report:main",
    "lr-find": "dnnlab.lr_find:main",
    "eval": "dnnlab.evaluate:main",
    "export": "dnnlab.export:main",
}

USAGE = """usage: dnnlab COMMAND [ARGS]

commands:
  train [OVERRIDES]        train one run; -m for a sweep (Hydra multirun); --help for the config
  list [GROUP]             every config group and option with a one-line description
  report PATH...           a run or sweep folder → terminal table, report.md, PNG plots
  lr-find [OVERRIDES]      learning-rate range test: CSV + plot + suggested rate
  eval RUN [--mc-dropout N]  evaluate a run's best checkpoint on the test split
  export RUN --fold-bn     fold batch norm away for fast inference, measure latency

examples:
  dnnlab train
  dnnlab train initializer=he_normal activation=elu normalization=batchnorm optimizer=nadam schedule=1cycle
  dnnlab train -m optimizer=sgd,nadam schedule=none,1cycle
"""


def hydra_app(task, argv: list[str], prog: str) -> int:
    """Run `task(cfg)` as a Hydra app over `argv` (overrides and Hydra flags)."""
    import hydra

    app = hydra.main(config_path="conf", config_name="config", version_base="1.3")(task)
    sys.argv = [prog, *argv]
    app()
    return 0


def train_task(cfg) -> float:
    """Hydra task: one training run; returns the best validation accuracy (for sweepers)."""
    from dnnlab.api import train

    summary = train(cfg)
    return float(summary.get("best_val_acc") or 0.0)


def train_main(argv: list[str]) -> int:
    return hydra_app(train_task, argv, "dnnlab train")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"dnnlab: unknown command {command!r}; valid: {', '.join(COMMANDS)}\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    module, func = COMMANDS[command].split(":")
    return getattr(importlib.import_module(module), func)(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
