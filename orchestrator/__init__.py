"""The controller side of a run: spec, the pure round planner and its driver, the worker group, Ray, MLflow."""
