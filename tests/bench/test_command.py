"""`sentchat bench` is a command the load suite registers (entry-point group
``sentchat.commands``), so the product finds it without importing the bench."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import gateway.cli
from bench.command import command as bench_command
from gateway.commands import discover

ROOT = Path(__file__).resolve().parents[2]


def sentchat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_the_bench_registers_itself() -> None:
    assert discover()["bench"] is bench_command


def test_bench_help_lists_its_commands() -> None:
    done = sentchat("bench", "--help")
    assert done.returncode == 0, done.stderr
    assert "saturate" in done.stdout and "idle" in done.stdout


def test_bench_saturate_help_is_the_suite_s_own() -> None:
    done = sentchat("bench", "saturate", "--help")
    assert done.returncode == 0, done.stderr
    assert "--connections" in done.stdout and "--reference" in done.stdout


def test_sentchat_help_names_the_bench_and_a_bare_bench_shows_usage() -> None:
    done = sentchat("--help")
    assert done.returncode == 0 and "bench" in done.stdout, done
    done = sentchat("bench")
    assert done.returncode == 2 and "usage: sentchat bench" in done.stderr, done


def test_python_m_bench_is_the_same_command() -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "saturate" in done.stdout, done


def test_without_the_bench_installed_the_tool_says_how_to_get_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # An installation whose entry points register no `bench` (the product wheel alone).
    monkeypatch.setattr(gateway.cli, "discover_commands", dict)
    assert gateway.cli.main(["bench", "saturate"]) == 2
    assert "load suite is not installed" in capsys.readouterr().err
