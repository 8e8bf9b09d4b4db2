"""Tests of what the project promises beyond the library: docs, examples, API, CLI, quality (see tests/README.md)."""
