"""Brokers: fan-out, streams and presence behind one interface."""
