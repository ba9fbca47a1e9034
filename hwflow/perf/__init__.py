"""Cycle-level model of the accelerator (SimPy): HBM channels, unit processes, tokens.

:mod:`hwflow.perf.machine` runs priced per-unit streams; :mod:`hwflow.perf.hbm` is the HBM.
"""
