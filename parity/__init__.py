"""Parity with each method's official code (issue 19): shared inputs, golden files, one module per method.

Never installed and never imported by taskres itself. ``parity.fixture`` holds the deterministic inputs and the
golden-file format; ``parity.<method>`` runs the authors' code (``python -m parity.<method> --repo SNAPSHOT``)
and recomputes the same outputs with taskres; ``tests/parity/test_golden.py`` compares them in CI.
"""
