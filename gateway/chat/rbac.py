"""Who may do what: pure functions over roles, so every rule is tested without a database.

Workspace roles: owner > admin > member > guest. Channel roles: admin, member. A caller
that may not *see* a channel gets "not found" from the service (never "forbidden"), so
private channels do not leak their existence; one that sees it but may not act gets
"forbidden".
"""

from __future__ import annotations

from typing import Literal

WorkspaceRole = Literal["owner", "admin", "member", "guest"]
ChannelRole = Literal["admin", "member"]
ChannelKind = Literal["public", "private", "dm", "group_dm"]

WORKSPACE_ROLES: tuple[str, ...] = ("owner", "admin", "member", "guest")


def is_workspace_admin(role: str) -> bool:
    """Owners and admins administer the whole workspace."""
    return role in ("owner", "admin")


def can_see(role: str, kind: str, member_role: str | None) -> bool:
    """Read a channel's messages, history, presence, pins (and subscribe to it).

    Members always; a public channel also to every non-guest (previewing before joining).
    Private channels and DMs are invisible to non-members, workspace admins included."""
    if member_role is not None:
        return True
    return kind == "public" and role != "guest"


def can_join(role: str, kind: str) -> bool:
    """Join by oneself: public channels only, and not guests (they are added by others)."""
    return kind == "public" and role != "guest"


def can_post(member_role: str | None, archived: bool) -> bool:
    """Send, react, pin, set the topic: members of a channel that is not archived."""
    return member_role is not None and not archived


def can_create(role: str) -> bool:
    """Create public or private channels: everyone but guests."""
    return role != "guest"


def can_edit(actor: str, author: str) -> bool:
    """Edit a message: its author only (admins delete, they do not rewrite others' words)."""
    return actor == author


def can_delete(actor: str, role: str, author: str, member_role: str | None) -> bool:
    """Delete a message: its author, a channel admin, or a workspace admin."""
    return actor == author or member_role == "admin" or is_workspace_admin(role)


def can_manage_members(role: str, kind: str, member_role: str | None) -> bool:
    """Invite and kick: channel admins (and workspace admins); never in DMs."""
    if kind in ("dm", "group_dm"):
        return False
    return member_role == "admin" or (is_workspace_admin(role) and kind == "public") or (
        is_workspace_admin(role) and member_role is not None)


def can_archive(role: str, kind: str, member_role: str | None) -> bool:
    """Archive: channel admins and workspace admins; DMs are not archived."""
    if kind in ("dm", "group_dm"):
        return False
    return member_role == "admin" or (is_workspace_admin(role) and (kind == "public" or member_role is not None))


def can_read_versions(role: str) -> bool:
    """The full edit/delete history of a message: workspace admins (moderation, compliance)."""
    return is_workspace_admin(role)


def can_set_role(role: str, target_role: str) -> bool:
    """Change a workspace role: admins may grant up to admin; only owners grant owner."""
    if role == "owner":
        return True
    return role == "admin" and target_role != "owner"
