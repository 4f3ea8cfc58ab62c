"""Evaluation of binary tumour (1) / benign (0) patch classifiers.

:mod:`patchray.evaluation.metrics` computes ROC AUC, curves, confusion-matrix metrics and the
decision threshold (pure numpy). :mod:`patchray.evaluation.report` draws the report pictures
(matplotlib, imported only when a picture is drawn).
"""
