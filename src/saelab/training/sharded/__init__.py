"""Latent-sharded training: the sharded model and its step, plugged into the same loop."""
