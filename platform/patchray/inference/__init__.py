"""Inference on patches with an OpenVINO model: the input contract and the predictor.

Shared by evaluation (Ray Data batch scoring), serving (Ray Serve) and the benchmarks.
Nothing here imports TensorFlow (tested): replicas start fast and stay small.
"""
