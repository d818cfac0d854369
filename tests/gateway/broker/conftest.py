"""Broker tests run against real Valkey servers (see tests/redis_servers.py)."""

from tests.redis_servers import redis_servers, redis_urls

__all__ = ["redis_servers", "redis_urls"]
