"""Runnable examples; every README snippet lives here and runs in the tests."""
