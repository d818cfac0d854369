"""Durable storage (PostgreSQL). Populated by the durable-history issue."""
