"""The training loop and what it is handed: run folders, checkpoints, objective, L0 control, schedules."""
