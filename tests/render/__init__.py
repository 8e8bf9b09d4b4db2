"""Tests of rendering: Liquid, the fast path, limits (see tests/README.md)."""
