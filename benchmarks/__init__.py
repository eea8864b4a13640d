"""Benchmarks: measurements that print ratios against a baseline, never part of the test run.

Run them with ``make bench`` (or ``.venv/bin/python -m benchmarks --help``); see docs/performance.md.
"""
