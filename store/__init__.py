"""The bottom layer: the run store (tables, run-store API, lease, migrations' engine) and the records
every layer shares: RoundPlan/RoundResult, typed configs, LR schedules, errors, names, secret masking."""
