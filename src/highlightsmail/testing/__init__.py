"""Test helpers: a local SendGrid-compatible server for tests and benchmarks."""
