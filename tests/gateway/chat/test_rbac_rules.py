"""The RBAC rules of gateway/chat/rbac.py as pure functions: every function's allow and
deny cases, over every workspace role, channel kind and channel role."""

from __future__ import annotations

import itertools

import pytest

from gateway.chat import rbac

ROLES = ("owner", "admin", "member", "guest")
KINDS = ("public", "private", "dm", "group_dm")
MEMBER_ROLES = ("admin", "member", None)


def test_workspace_roles_are_listed_strongest_first() -> None:
    assert rbac.WORKSPACE_ROLES == ROLES


@pytest.mark.parametrize("role", ROLES)
def test_is_workspace_admin(role: str) -> None:
    assert rbac.is_workspace_admin(role) is (role in ("owner", "admin"))


def test_is_workspace_admin_rejects_unknown_roles() -> None:
    assert rbac.is_workspace_admin("") is False
    assert rbac.is_workspace_admin("Admin") is False


@pytest.mark.parametrize(("role", "kind", "member_role"), list(itertools.product(ROLES, KINDS, MEMBER_ROLES)))
def test_can_see(role: str, kind: str, member_role: str | None) -> None:
    # Members see everything they are in; others only public channels, and guests not even those.
    expected = member_role is not None or (kind == "public" and role != "guest")
    assert rbac.can_see(role, kind, member_role) is expected


def test_can_see_private_and_dm_content_is_not_for_admins_outside() -> None:
    for role in ("owner", "admin"):
        for kind in ("private", "dm", "group_dm"):
            assert rbac.can_see(role, kind, None) is False
    assert rbac.can_see("guest", "public", None) is False
    assert rbac.can_see("guest", "public", "member") is True
    assert rbac.can_see("member", "public", None) is True


@pytest.mark.parametrize(("role", "kind"), list(itertools.product(ROLES, KINDS)))
def test_can_join(role: str, kind: str) -> None:
    assert rbac.can_join(role, kind) is (kind == "public" and role != "guest")


@pytest.mark.parametrize(("member_role", "archived"), list(itertools.product(MEMBER_ROLES, (False, True))))
def test_can_post(member_role: str | None, archived: bool) -> None:
    assert rbac.can_post(member_role, archived) is (member_role is not None and not archived)


@pytest.mark.parametrize("role", ROLES)
def test_can_create(role: str) -> None:
    assert rbac.can_create(role) is (role != "guest")


def test_can_edit_is_the_author_only() -> None:
    assert rbac.can_edit("alice", "alice") is True
    assert rbac.can_edit("bob", "alice") is False
    assert rbac.can_edit("Alice", "alice") is False  # ids are exact


@pytest.mark.parametrize(("role", "member_role"), list(itertools.product(ROLES, MEMBER_ROLES)))
def test_can_delete_others_messages(role: str, member_role: str | None) -> None:
    expected = member_role == "admin" or role in ("owner", "admin")
    assert rbac.can_delete("bob", role, "alice", member_role) is expected


@pytest.mark.parametrize(("role", "member_role"), list(itertools.product(ROLES, MEMBER_ROLES)))
def test_can_delete_own_messages(role: str, member_role: str | None) -> None:
    assert rbac.can_delete("alice", role, "alice", member_role) is True


def test_can_manage_members_allow() -> None:
    for role, kind in itertools.product(ROLES, ("public", "private")):
        assert rbac.can_manage_members(role, kind, "admin") is True  # the channel's admins
    for role, kind, member_role in itertools.product(("owner", "admin"), ("public", "private"),
                                                     ("admin", "member")):
        assert rbac.can_manage_members(role, kind, member_role) is True  # workspace admins inside
    assert rbac.can_manage_members("admin", "public", None) is True  # public: from outside too


def test_can_manage_members_deny() -> None:
    for role in ("member", "guest"):
        for kind in ("public", "private"):
            assert rbac.can_manage_members(role, kind, "member") is False
            assert rbac.can_manage_members(role, kind, None) is False
    for role in ("owner", "admin"):
        assert rbac.can_manage_members(role, "private", None) is False  # not from outside
    for role, kind, member_role in itertools.product(ROLES, ("dm", "group_dm"), MEMBER_ROLES):
        assert rbac.can_manage_members(role, kind, member_role) is False  # DMs have no admins


def test_can_archive_allow() -> None:
    for role, kind in itertools.product(ROLES, ("public", "private")):
        assert rbac.can_archive(role, kind, "admin") is True
    for role in ("owner", "admin"):
        assert rbac.can_archive(role, "public", None) is True
        assert rbac.can_archive(role, "private", "member") is True
        assert rbac.can_archive(role, "public", "member") is True


def test_can_archive_deny() -> None:
    for role in ("member", "guest"):
        for kind in ("public", "private"):
            assert rbac.can_archive(role, kind, "member") is False
            assert rbac.can_archive(role, kind, None) is False
    for role in ("owner", "admin"):
        assert rbac.can_archive(role, "private", None) is False
    for role, kind, member_role in itertools.product(ROLES, ("dm", "group_dm"), MEMBER_ROLES):
        assert rbac.can_archive(role, kind, member_role) is False


@pytest.mark.parametrize("role", ROLES)
def test_can_read_versions(role: str) -> None:
    assert rbac.can_read_versions(role) is (role in ("owner", "admin"))


@pytest.mark.parametrize(("role", "target"), list(itertools.product(ROLES, ROLES)))
def test_can_set_role(role: str, target: str) -> None:
    expected = role == "owner" or (role == "admin" and target != "owner")
    assert rbac.can_set_role(role, target) is expected
