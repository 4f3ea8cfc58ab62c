"""The model registry (``patchray registry``): versioned models with cards and aliases, on a
local path or ``s3://``. ``card`` is what a model is; ``store`` is where models live."""
