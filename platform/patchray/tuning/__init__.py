"""Hyperparameter search with Ray Tune over the training of ``patchray train``.

``space`` turns the ``tune:`` section into Ray Tune's search space and a sampled point back
into a train job config; ``plan`` sizes trials to the cluster; ``trial`` is the trainable;
``experiment`` builds (or restores) the Tuner; ``progress`` narrates scheduler decisions;
``results`` writes the trial table, the trial curves and the best spec.
"""
