"""Benchmarks: each measures the bot against a baseline doing the same work in the same run.

Run one with ``python -m bench.<name>`` (``--quick`` for a short smoke run); the
last line printed is its headline figure. See ``bench/README.md``.
"""
