"""Analysis on top of the cycle model: GPU roofline baselines, sweeps and plots.

Sweeps run simulations and write a results table; plots read a results table and never run
simulations.
"""
