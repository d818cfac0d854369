"""The integrations' Centrifugo RPC methods: ``commands.run``, ``commands.list`` and
``actions.invoke`` (the same operations as ``POST /v1/channels/{id}/commands``,
``GET /v1/commands`` and ``POST /v1/messages/{id}/actions``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta

from centrifugo_bridge.codes import ClientError
from gateway.chat.errors import ChatError, bad_request
from gateway.chat.schema import ChannelId, MessageId, Params

if TYPE_CHECKING:
    from gateway.chat.service import Actor, ChatService
    from gateway.extension import Engine, RpcHandler
    from gateway.integrations.service import IntegrationService


class CommandsRun(Params):
    channel_id: ChannelId
    command: Annotated[str, Meta(pattern=r"^/[a-z0-9_-]{1,32}$")]
    text: Annotated[str, Meta(max_length=4000)] = ""


class ActionsInvoke(Params):
    message_id: MessageId
    action_id: Annotated[str, Meta(min_length=1, max_length=255)]
    block_id: Annotated[str, Meta(max_length=255)] | None = None
    value: Annotated[str, Meta(max_length=2000)] | None = None


def rpc_methods(engine: Engine, chat: ChatService, integrations: IntegrationService) -> dict[str, RpcHandler]:
    def method(params: type[Params], call: Callable[[Actor, Any], Awaitable[dict[str, Any]]]) -> RpcHandler:
        async def run(user: str, client: str, data: bytes) -> bytes:
            try:
                try:
                    p = msgspec.json.decode(data or b"{}", type=params)
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    raise bad_request(str(exc)) from None
                actor = await chat.actor(user)
                return msgspec.json.encode(await call(actor, p))
            except ChatError as exc:
                raise ClientError(exc.status, f"{exc.code}: {exc.message}") from None

        return run

    class NoParams(Params):
        pass

    return {
        "commands.run": method(CommandsRun, lambda a, p: integrations.commands_run(
            a, p.channel_id, p.command, p.text)),
        "commands.list": method(NoParams, lambda a, p: integrations.commands_list(a)),
        "actions.invoke": method(ActionsInvoke, lambda a, p: integrations.actions_invoke(
            a, p.message_id, p.action_id, p.block_id, p.value)),
    }
