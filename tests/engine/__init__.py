"""Tests of the Drip engine on the fakes and real stores (see tests/README.md)."""
