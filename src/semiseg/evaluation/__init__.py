"""Evaluation of segmentations against ground truth: per-region Dice, IoU and HD95 (mm).

:mod:`semiseg.evaluation.metrics` computes the numbers for one pair of label maps;
:mod:`semiseg.evaluation.evaluate` runs them over a folder of predictions and writes the reports.
"""
