"""SENTchat gateway: the asyncio WebSocket/HTTP server that speaks the Centrifugo protocol."""

__version__ = "0.1.0"

LOG_ROOT = "sentchat"
"""Root of the engine's logger names (``sentchat.node``, ``sentchat.server`` ...), so an
operator can set one level for all of them."""
