"""Integrations (docs/integrations.md): apps and bots, incoming webhooks, the Slack Web API
subset, slash commands, interactive messages and outgoing events.

They are part of the chat extension (gateway/chat/__init__.py installs their routes and RPC
methods when ``[integrations] enabled``) because everything an app does is a chat
operation by its bot user. This package stays light: the service loads with the chat.
"""
