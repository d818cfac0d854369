"""SENTchat gateway: the asyncio WebSocket/HTTP server that speaks the Centrifugo protocol."""

__version__ = "0.1.0"
