"""Mixture policies: which domain weights each round trains on."""
