"""Tests of the storage adapters and the contract kit (see tests/README.md)."""
