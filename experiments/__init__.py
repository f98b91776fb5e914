"""Experiments: each module holds a typed config with presets and a `run(cfg, run_dir)`."""
