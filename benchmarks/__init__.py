"""Side-by-side benchmarks: rxqueue against the physical floor and its peers.

Scripts, not tests: ``python -m benchmarks [memory|sqlite] [--quick]``.
See ``python -m benchmarks --help``.
"""
