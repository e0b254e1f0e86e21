"""Training on the worker group: model families, the rank loop (Lightning Fabric), checkpoints, export."""
