"""OpenVINO inference and the Ray Serve deployment (never imports TensorFlow)."""
