"""Evaluation of binary tumour (1) / benign (0) patch classifiers.

:mod:`~patchray.evaluation.metrics` computes ROC AUC, curves, confusion-matrix metrics and
the decision threshold (pure numpy, checked against scikit-learn in the tests);
:mod:`~patchray.evaluation.scoring` scores a split with the OpenVINO IR on Ray Data;
:mod:`~patchray.evaluation.evaluate` is the stage (threshold on val, test at it, the report);
:mod:`~patchray.evaluation.report` draws the pictures (matplotlib, imported when drawing).
"""
