"""Fitting networks: the fit loop, ensembles, cross-fitting and the semi-supervised phases."""
