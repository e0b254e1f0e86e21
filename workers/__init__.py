"""One round of training: model, schedules, data, Lightning module."""
