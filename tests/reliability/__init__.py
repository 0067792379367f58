"""Fault-injection tests of ../shared/RELIABILITY.md: crashes, database outages, lost replies."""
