"""On-demand benchmarks (never run by the test suite): ``python -m benchmarks.NAME``."""
