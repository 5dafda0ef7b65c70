"""The commands besides `train`: lr-find, eval, export and report (each has a `main(argv)`; see cli.COMMANDS)."""
