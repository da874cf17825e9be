"""Calibration and evaluation: thresholds from held-out scores, detection metrics."""
