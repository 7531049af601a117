"""Load tests (locust) and benchmarks of the jangteo server, with their latest results."""
