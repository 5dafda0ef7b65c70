"""The engine: the training loop (`trainer`), its named hook points (`hooks`) and the opt-in fast paths (`acceleration`)."""
