"""Tests of the pure core: model, scheduler, planning, time, serialization (see tests/README.md)."""
