"""Benchmarks of the SENTchat gateway (run as `python -m bench.<name>`)."""
