"""Benchmarks run by ``hwflow bench NAME``: each module here has ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``, and prints its figures.

Speed targets live here, not in timed unit tests.
"""
