"""Side-by-side benchmarks: rxqueue beside its baselines and its peers.

Scripts, not tests: ``python -m benchmarks [--scenario NAME ...] [--quick]``
writes ``benchmarks/results/<scenario>.{json,md,png}``; see
``python -m benchmarks --help``. Scenarios are registered in
``benchmarks.scenarios.SCENARIOS``.
"""
