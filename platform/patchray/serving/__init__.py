"""The Ray Serve deployment and its launcher (never imports TensorFlow); the predictor it
serves with is :mod:`patchray.inference`."""
