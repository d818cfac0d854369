"""Broker tests run against real Valkey servers (fixtures in tests/redis_servers.py, made
available to every test by tests/conftest.py)."""
