"""Training on the worker group: model, schedules, sampler, the rank loop (Lightning Fabric), checkpoints, export."""
