"""``lessee broker fetch-amd-crls`` (``agent.amd_crl_fetch``): AMD's CRLs from KDS into the
broker's ``--amd-crls`` directory, checked before they are written and never rolled back.

A real HTTP server on loopback stands in for KDS (``<base>/<kind>/v1/<product>/crl``) and
serves lists signed by an emulated ARK (accepted through ``extra_arks`` / ``--trust-emulation``,
as the real ones are through the pinned ARK). The last test fetches into the directory of a
serving broker subprocess and makes it reload.
"""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.amd_crl_fetch import (
    AmdCrlFetchError,
    check_fetched_crl,
    fetch_amd_crl,
    update_crl_directory,
)
from agent.cli.main import main
from agent.emulation import EmulationPki
from attest.errors import InputError
from attest.snp.report import Product, SigningKey
from attest.snp.verify import MAX_CRL_BYTES
from tests.agent.rawhttp import RawServer

REPO = Path(__file__).resolve().parents[2]
MILAN_VCEK = ([Product.MILAN], [SigningKey.VCEK])


#: One PKI and list for the property test (hypothesis runs it many times; made once).
_HYPOTHESIS_PKI = EmulationPki.create(Path(tempfile.mkdtemp(prefix="lessee-fetch-")) / "pki")
_HYPOTHESIS_CRL = _HYPOTHESIS_PKI.amd_crl(at=datetime.now(UTC))


class Kds:
    """``path -> (status, body)``; anything else is a 404, as KDS answers an unknown list."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.asked: list[str] = []
        kds = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                kds.asked.append(self.path)
                status, body = kds.answers.get(self.path, (404, b"not found"))
                self.send_response(status)
                if status in (301, 302):
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> EmulationPki:
    return EmulationPki.create(tmp_path_factory.mktemp("fetch") / "pki")


@pytest.fixture
def kds() -> Iterator[Kds]:
    k = Kds()
    yield k
    k.server.shutdown()
    k.server.server_close()


def _update(kds: Kds, d: Path, pki: EmulationPki, at: datetime | None = None) -> list[str]:
    out = update_crl_directory(
        d,
        at=at or datetime.now(UTC),
        products=MILAN_VCEK[0],
        kinds=MILAN_VCEK[1],
        base_url=kds.url,
        extra_arks=(pki.ark.cert,),
    )
    return [f"{o.name}:{o.status}" for o in out]


def test_a_current_list_is_written_then_left_alone(
    kds: Kds, pki: EmulationPki, tmp_path: Path
) -> None:
    crl = pki.amd_crl(at=datetime.now(UTC))
    kds.answers["/vcek/v1/Milan/crl"] = (200, crl)
    assert _update(kds, tmp_path, pki) == ["vcek-Milan:written"]
    assert (tmp_path / "vcek-Milan.crl").read_bytes() == crl
    assert _update(kds, tmp_path, pki) == ["vcek-Milan:unchanged"]
    assert kds.asked == ["/vcek/v1/Milan/crl"] * 2
    assert [p.name for p in tmp_path.iterdir()] == ["vcek-Milan.crl"]  # no temporary left


def test_an_older_list_never_replaces_a_newer_one(
    kds: Kds, pki: EmulationPki, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    newer = pki.amd_crl(at=now, revoked_serials=(pki.ask.cert.serial_number,))
    (tmp_path / "vcek-Milan.crl").write_bytes(newer)
    kds.answers["/vcek/v1/Milan/crl"] = (200, pki.amd_crl(at=now - timedelta(hours=1)))
    assert _update(kds, tmp_path, pki) == ["vcek-Milan:kept"]
    assert (tmp_path / "vcek-Milan.crl").read_bytes() == newer


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param((500, b"oops"), "KDS answered HTTP 500", id="server-error"),
        pytest.param((302, b""), "KDS answered HTTP 302", id="redirect-not-followed"),
        pytest.param((200, b"<html>maintenance</html>"), "malformed CRL", id="not-a-crl"),
        pytest.param((200, b"\x30" * (MAX_CRL_BYTES + 1)), "exceeds", id="oversized"),
    ],
)
def test_a_bad_answer_leaves_the_file_untouched(
    kds: Kds, pki: EmulationPki, tmp_path: Path, answer: tuple[int, bytes], error: str
) -> None:
    held = pki.amd_crl(at=datetime.now(UTC))
    (tmp_path / "vcek-Milan.crl").write_bytes(held)
    kds.answers["/vcek/v1/Milan/crl"] = answer
    (outcome,) = update_crl_directory(
        tmp_path,
        at=datetime.now(UTC),
        products=MILAN_VCEK[0],
        kinds=MILAN_VCEK[1],
        base_url=kds.url,
        extra_arks=(pki.ark.cert,),
    )
    assert outcome.status == "failed" and error in str(outcome.error)
    assert (tmp_path / "vcek-Milan.crl").read_bytes() == held


def test_a_list_not_current_or_not_signed_by_the_ark_is_refused(
    pki: EmulationPki, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    crl = pki.amd_crl(at=now)
    parsed = x509.load_der_x509_crl(crl)
    assert check_fetched_crl(
        crl, SigningKey.VCEK, Product.MILAN, at=now, extra_arks=(pki.ark.cert,)
    ) == (parsed.last_update_utc, parsed.next_update_utc)
    with pytest.raises(AmdCrlFetchError, match="not issued by the pinned ARK-Milan"):
        check_fetched_crl(crl, SigningKey.VCEK, Product.MILAN, at=now)  # emulation not trusted
    with pytest.raises(AmdCrlFetchError, match="not current at"):
        check_fetched_crl(
            crl, SigningKey.VCEK, Product.MILAN, at=now + timedelta(days=60),
            extra_arks=(pki.ark.cert,),
        )  # fmt: skip
    other = EmulationPki.create(tmp_path / "other")  # same ARK name, another key
    with pytest.raises(AmdCrlFetchError, match="does not verify with the ARK"):
        check_fetched_crl(
            other.amd_crl(at=now), SigningKey.VCEK, Product.MILAN, at=now,
            extra_arks=(pki.ark.cert,),
        )  # fmt: skip
    with pytest.raises(AmdCrlFetchError, match="not 'ARK-Genoa'"):
        check_fetched_crl(crl, SigningKey.VCEK, Product.GENOA, at=now, extra_arks=(pki.ark.cert,))


def test_absent_lists_and_urls(kds: Kds, pki: EmulationPki, tmp_path: Path) -> None:
    assert fetch_amd_crl(SigningKey.VLEK, Product.TURIN, base_url=kds.url) is None  # a 404
    out = update_crl_directory(
        tmp_path, at=datetime.now(UTC), base_url=kds.url, extra_arks=(pki.ark.cert,)
    )
    assert {o.status for o in out} == {"absent"} and len(out) == 6  # 3 products x 2 kinds
    assert not list(tmp_path.iterdir())
    for url in ("http://kdsintf.amd.com", "ftp://127.0.0.1", "https://"):
        with pytest.raises(InputError, match="KDS URL"):
            update_crl_directory(tmp_path, at=datetime.now(UTC), base_url=url)
    with pytest.raises(InputError, match="not a directory"):
        update_crl_directory(tmp_path / "absent", at=datetime.now(UTC), base_url=kds.url)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX")
def test_the_cli_fetches_and_makes_a_serving_broker_reload(
    kds: Kds, pki: EmulationPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crls = tmp_path / "crls"
    crls.mkdir()
    old = pki.amd_crl(at=datetime.now(UTC) - timedelta(hours=1))
    (crls / "vcek-Milan.crl").write_bytes(old)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli.main", "broker", "serve", "--state",
         str(tmp_path / "s"), "--listen", "127.0.0.1:0", "--amd-crls", str(crls),
         "--trust-emulation", str(pki.directory)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert "listening on" in proc.stdout.readline()
        assert "emulation roots" in proc.stdout.readline()
        newer = pki.amd_crl(at=datetime.now(UTC), revoked_serials=(pki.ask.cert.serial_number,))
        kds.answers["/vcek/v1/Milan/crl"] = (200, newer)
        args = ["broker", "fetch-amd-crls", "--dir", str(crls), "--product", "Milan",
                "--kind", "vcek", "--kds-url", kds.url, "--trust-emulation", str(pki.directory),
                "--notify-pid", str(proc.pid)]  # fmt: skip
        assert main(args) == 0
        out = capsys.readouterr().out
        assert out.startswith("vcek-Milan: written (thisUpdate ")
        assert f"sent SIGHUP to {proc.pid}" in out
        assert proc.stdout.readline().strip() == "lessee broker: reloaded 0 RIM(s) and 1 AMD CRL(s)"
        assert (crls / "vcek-Milan.crl").read_bytes() == newer
        assert main(args) == 0  # unchanged: no signal sent
        assert "sent SIGHUP" not in capsys.readouterr().out
        kds.answers["/vcek/v1/Milan/crl"] = (500, b"")
        assert main(args) == 1
        assert "vcek-Milan: failed: vcek-Milan: KDS answered HTTP 500" in capsys.readouterr().out
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_hostile_answers_only_raise_the_typed_error(data: st.DataObject) -> None:
    """Whatever KDS (or whoever answers for it) sends: a checked list or ``AmdCrlFetchError``;
    a mutated list is never accepted as a different one."""
    pki = _HYPOTHESIS_PKI
    crl = _HYPOTHESIS_CRL
    now = datetime.now(UTC)
    if data.draw(st.booleans()):
        body = data.draw(st.binary(max_size=4096))
    else:
        mutated = bytearray(crl)
        at = data.draw(st.integers(0, len(mutated) - 1))
        mutated[at] ^= data.draw(st.integers(1, 255))
        body = bytes(mutated)
    try:
        check_fetched_crl(body, SigningKey.VCEK, Product.MILAN, at=now, extra_arks=(pki.ark.cert,))
    except AmdCrlFetchError:
        return
    assert body == crl, "a changed list was accepted"


def test_a_left_over_temporary_does_not_stop_the_broker(pki: EmulationPki, tmp_path: Path) -> None:
    """A fetch killed between writing its temporary and the rename leaves ``.tmp-*.part``; the
    broker's loader skips hidden files (and still refuses any other stray file)."""
    from agent.rpc.server import load_amd_crls

    crl = pki.amd_crl(at=datetime.now(UTC))
    (tmp_path / "vcek-Milan.crl").write_bytes(crl)
    (tmp_path / ".tmp-abc.part").write_bytes(crl[:100])
    assert load_amd_crls(tmp_path) == {(SigningKey.VCEK, Product.MILAN): crl}
    (tmp_path / "tmp-abc.part").write_bytes(crl[:100])
    with pytest.raises(InputError, match="not an AMD CRL file"):
        load_amd_crls(tmp_path)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX")
def test_broken_http_for_one_list_still_lets_the_others_through_and_the_broker_reload(
    pki: EmulationPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """vcek-Milan arrives whole, vlek-Milan's answer is not HTTP: the first is written, the
    second is a failed outcome, and the broker is still told to reload (it once aborted the run
    with an untyped BadStatusLine after writing the first list, and sent no SIGHUP)."""
    crl = pki.amd_crl(at=datetime.now(UTC))
    answers = iter(
        [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(crl) + crl, b"garbage\r\n\r\n"]
    )
    server = RawServer(lambda conn, stop: conn.sendall(next(answers)))
    broker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        rc = main(
            ["broker", "fetch-amd-crls", "--dir", str(tmp_path), "--product", "Milan",
             "--kds-url", server.url, "--timeout", "2", "--trust-emulation", str(pki.directory),
             "--notify-pid", str(broker.pid)]
        )  # fmt: skip
        assert broker.wait(timeout=10) == -signal.SIGHUP
    finally:
        server.close()
        if broker.poll() is None:
            broker.kill()
            broker.wait()
    out = capsys.readouterr().out
    assert rc == 1  # one list failed
    assert "vcek-Milan: written" in out
    assert "vlek-Milan: failed: vlek-Milan: KDS unreachable: bad HTTP answer (BadStatusLine" in out
    assert [p.name for p in tmp_path.iterdir()] == ["vcek-Milan.crl"]


@pytest.mark.parametrize("url", ["https://127.0.0.1:abc", "https://kdsintf.amd.com:99999"])
def test_a_malformed_kds_url_is_a_usage_error(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["broker", "fetch-amd-crls", "--dir", str(tmp_path), "--kds-url", url]
    assert main(args) == 2
    assert "KDS URL is not a valid URL" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_fetched_list_is_readable_by_a_broker_running_as_another_user(
    kds: Kds, pki: EmulationPki, tmp_path: Path
) -> None:
    """A new list is 0644 (CRLs are public); a replaced one keeps the mode the operator gave
    it. Both were once 0600, so a broker not running as the fetching user could not reload."""
    kds.answers["/vcek/v1/Milan/crl"] = (200, pki.amd_crl(at=datetime.now(UTC)))
    assert _update(kds, tmp_path, pki) == ["vcek-Milan:written"]
    path = tmp_path / "vcek-Milan.crl"
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o640)  # the operator's choice: the broker's group may read
    newer = pki.amd_crl(at=datetime.now(UTC), revoked_serials=(pki.ask.cert.serial_number,))
    kds.answers["/vcek/v1/Milan/crl"] = (200, newer)
    assert _update(kds, tmp_path, pki) == ["vcek-Milan:written"]
    assert path.read_bytes() == newer and path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("pid", ["0", "-1", "-2", "1", "x", str(2**31)])
def test_notify_pid_must_be_one_process(pid: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Review: ``--notify-pid 0`` reached ``os.kill(0, SIGHUP)``, which hangs up this process's
    whole group (the cron job, the shell), and ``-1`` every process the caller may signal."""
    assert main(["broker", "fetch-amd-crls", "--dir", "d", f"--notify-pid={pid}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lessee: error: --notify-pid takes ") and err.count("\n") == 1, err
    assert repr(pid) in err


def test_notify_pid_is_checked_before_anything_is_fetched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pid that names no process (or one we may not signal) is exit 2 up front: not a list
    fetched and written, then a SIGHUP that goes nowhere."""
    import os

    import agent.amd_crl_fetch as fetch

    def no_fetch(*_: object, **__: object) -> None:
        raise AssertionError("fetched before --notify-pid was checked")

    monkeypatch.setattr(fetch, "update_crl_directory", no_fetch)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process (until the kernel reuses it)
    argv = ["broker", "fetch-amd-crls", "--dir", str(tmp_path), "--notify-pid"]
    assert main([*argv, str(gone.pid)]) == 2
    err = capsys.readouterr().err
    assert err == f"lessee: error: --notify-pid {gone.pid}: no such process\n"

    def not_permitted(pid: int, sig: int) -> None:
        assert sig == 0  # only probed: nothing is sent
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", not_permitted)
    assert main([*argv, "4242"]) == 2
    err = capsys.readouterr().err
    assert err == "lessee: error: --notify-pid 4242: not permitted to signal that process\n"
    assert list(tmp_path.iterdir()) == []
