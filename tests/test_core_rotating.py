"""The one rotating-secret reader (outputs' `{file: PATH}` credentials and the Kubernetes token), on real files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from logagent.kubernetes.api import TokenSource
from logagent.rotating import RotatingSecret


def test_a_token_file_missing_at_start_is_read_once_it_appears(tmp_path: Path, caplog) -> None:
    path = tmp_path / "token"
    tokens = TokenSource(None, str(path))
    assert tokens.header() == {}
    path.write_text("tok-1\n")
    assert tokens.current(force=True) == "tok-1"
    assert tokens.header() == {"Authorization": "Bearer tok-1"}


def test_a_symlink_swap_to_a_new_file_is_seen_and_bad_content_keeps_the_last_good_value(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # kubelet's projected volume: token -> ..data/token, ..data a symlink swapped to a new directory
    for name, text in (("a", "tok-a\n"), ("b", "tok-b\n"), ("c", "two\nlines\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "token").write_text(text)
    os.symlink("a", tmp_path / "..data")
    os.symlink("..data/token", tmp_path / "token")
    secret = RotatingSecret.open(str(tmp_path / "token"))
    assert secret.current(force=True) == "tok-a"

    def swap(to: str) -> None:
        os.symlink(to, tmp_path / "..data_new")
        os.replace(tmp_path / "..data_new", tmp_path / "..data")

    swap("b")
    assert secret.current(force=True) == "tok-b"
    with caplog.at_level(logging.WARNING, logger="logagent.rotating"):
        swap("c")
        assert secret.current(force=True) == "tok-b"
    assert "does not hold a single-line token" in caplog.text and "lines" not in caplog.text


def test_without_force_the_file_is_looked_at_no_more_than_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one")
    secret = RotatingSecret.open(str(path))
    path.write_text("second")
    assert secret.current() == "one"  # just looked: the change waits for the next look (or a forced one)
    secret.check_interval = 0.0  # the next look is due
    assert secret.current() == "second"
