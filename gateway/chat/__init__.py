"""The chat product (channels, DMs, threads, messages, read state, notifications, roles)
built on the gateway: one service layer (service.py) exposed as Centrifugo RPC methods and
as the JSON HTTP API under /v1/ (binding.py)."""
