"""The composition root: which extensions a node gets, from its settings.

``sentchat serve`` (and each of its workers) and the test fixtures build nodes here, so a
product enabled in the configuration is installed the same way everywhere, and
``gateway/node.py`` never names a product.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.node import Node

if TYPE_CHECKING:
    from gateway.broker.base import Broker
    from gateway.config import Settings
    from gateway.extension import Extension


def enabled_extensions(settings: Settings) -> list[Extension]:
    """The extensions ``settings`` enables, in installation (and start) order."""
    # Importing gateway.chat costs little: the service loads with the first chat call.
    from gateway.chat import ChatExtension, ChatNotEnabled

    extensions: list[Extension] = [ChatExtension() if settings.chat.enabled else ChatNotEnabled()]
    if settings.web.enabled:
        from gateway.web import WebClient

        extensions.append(WebClient())
    return extensions


def build_node(settings: Settings, broker: Broker | None = None,
               extensions: list[Extension] | None = None) -> Node:
    """A node with ``extensions`` (default: those the settings enable) installed; start it
    with ``await node.start()``."""
    node = Node(settings, broker)
    for extension in enabled_extensions(settings) if extensions is None else extensions:
        node.install(extension)
    return node
