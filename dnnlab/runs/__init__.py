"""The run folder: its paths and checkpoint keys (`rundir`), what it records and checks on resume (`record`),
sweep jobs matched to folders (`sweeps`), and what a config read from disk may name (`safe_config`)."""
