"""``agent.fetching.write_atomically``: the permissions a replaced or new file ends up with.

A CRL directory refreshed by root (a cron job) and read by a broker running as another user
once became unreadable after the first refresh: the temporary file's 0600 and root's ownership
replaced what the operator had set. A replaced file now keeps its mode (and, for root, its
owner); a new file gets the caller's mode, 0600 unless the caller says the data is public.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.fetching import write_atomically


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_a_new_file_is_private_unless_the_caller_says_public(tmp_path: Path) -> None:
    write_atomically(tmp_path / "secret", b"s")
    assert _mode(tmp_path / "secret") == 0o600  # the default: nothing is exposed by accident
    old = os.umask(0o077)  # the caller's mode is exact, whatever the umask
    try:
        write_atomically(tmp_path / "public", b"p", mode=0o644)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "public") == 0o644
    assert (tmp_path / "public").read_bytes() == b"p"


@pytest.mark.parametrize(("held", "given"), [(0o644, 0o600), (0o600, 0o644), (0o640, 0o644)])
def test_a_replaced_file_keeps_its_mode(tmp_path: Path, held: int, given: int) -> None:
    path = tmp_path / "list.crl"
    path.write_bytes(b"old")
    path.chmod(held)
    write_atomically(path, b"new", mode=given)
    assert path.read_bytes() == b"new" and _mode(path) == held


def test_set_id_bits_are_not_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    path.chmod(0o6755)
    write_atomically(path, b"new", mode=0o644)
    assert _mode(path) == 0o755


def test_a_symlink_is_replaced_by_a_file_of_the_callers_mode(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"t")
    target.chmod(0o666)
    link = tmp_path / "link"
    link.symlink_to(target)
    write_atomically(link, b"new", mode=0o644)
    assert not link.is_symlink() and _mode(link) == 0o644
    assert target.read_bytes() == b"t" and _mode(target) == 0o666


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_root_keeps_the_owner_of_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "vcek-Milan.crl"
    path.write_bytes(b"old")
    os.chown(path, 65534, 65534)
    path.chmod(0o600)  # readable by its owner (the broker's user) only
    write_atomically(path, b"new", mode=0o644)
    st = path.stat()
    assert (st.st_uid, st.st_gid, _mode(path)) == (65534, 65534, 0o600)


def test_no_temporary_is_left_when_the_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()
    (target / "x").write_bytes(b"")
    with pytest.raises(OSError):
        write_atomically(target, b"data", mode=0o644)  # a non-empty directory is in the way
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
