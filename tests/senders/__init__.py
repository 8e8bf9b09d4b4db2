"""Tests of the senders (see tests/README.md)."""
