"""Declarative pipelines that reproduce the paper's mixing-set ablations."""
