"""Patch datasets: records, synthetic data, ingest, patient splits, Ray Data pipelines."""
