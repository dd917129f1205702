"""Reloading the collateral the broker holds (``--rims``, ``--amd-crls``) while it serves.

Why: a held CRL past its nextUpdate refuses every SEV-SNP report of its kind and product;
before this, refreshing one meant restarting the broker. A reload (SIGHUP in ``lessee broker
serve``, ``RunningBroker.reload_held_collateral`` in code) must be all or nothing, never go
back to an older list, and keep what an appraisal checks and what it archives the same list.
Real broker on loopback, emulated ARK-signed CRLs.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import agent.broker.appraiser as appraiser_module
from agent.broker.appraiser import CompositeAppraiser
from agent.broker.config import BrokerConfig
from agent.rpc.server import RunningBroker, serve_broker
from attest.ear import Status
from attest.errors import InputError
from attest.snp.report import Product, SigningKey
from tests.appraise.test_composite_caches import Setup

VCEK_MILAN = (SigningKey.VCEK, Product.MILAN)
ROLE = "broker-amd-crl-vcek-milan"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tmp_path_factory.mktemp("reload") / "pki")


@pytest.fixture
def crl_dir(tmp_path: Path, setup: Setup) -> Path:
    d = tmp_path / "crls"
    d.mkdir()
    (d / "vcek-Milan.crl").write_bytes(setup.crl)  # current, revokes nothing
    return d


@pytest.fixture
def running(setup: Setup, crl_dir: Path, tmp_path: Path) -> Iterator[RunningBroker]:
    broker = serve_broker(
        BrokerConfig(
            state_dir=tmp_path / "state",
            listen="127.0.0.1:0",
            amd_crls_dir=crl_dir,
            trust_emulation=setup.pki.directory,
        )
    )
    try:
        yield broker
    finally:
        broker.stop(0)


def _revoking(setup: Setup, at: datetime) -> bytes:
    return setup.pki.amd_crl(at=at, revoked_serials=(setup.pki.ask.cert.serial_number,))


def _cpu(running: RunningBroker, setup: Setup) -> tuple[Status, list[object], bytes | None]:
    """Appraise a session whose evidence carries no CRL: only a held list can pass it."""
    bundle, binding = setup.session(crl=None)
    appraisal = running.broker.appraiser(bundle, binding, setup.policy, datetime.now(UTC))
    cpu = appraisal.devices[0]
    held = [data for role, _, data in appraisal.collateral if role == ROLE]
    assert len(held) <= 1
    return cpu.status, [f.actual for f in cpu.findings], held[0] if held else None


def _older(setup: Setup) -> bytes:
    """A current list made an hour before the others (CRL times are whole seconds: a list
    made in the same second as another is not older)."""
    return setup.pki.amd_crl(at=setup.made - timedelta(hours=1), revoked_serials=(9,))


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [
        r.lessee  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "lessee.broker" and r.getMessage() == name
    ]


def test_reload_holds_the_new_list_and_archives_it(
    running: RunningBroker, setup: Setup, crl_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert _cpu(running, setup) == (Status.AFFIRMING, [], setup.crl)
    newer = _revoking(setup, datetime.now(UTC))
    (crl_dir / "vcek-Milan.crl").write_bytes(newer)
    with caplog.at_level(logging.INFO, logger="lessee.broker"):
        report = running.reload_held_collateral()
    assert list(report.amd_crls) == ["vcek-Milan"] and report.amd_crls_dropped == ()
    assert _cpu(running, setup) == (Status.CONTRAINDICATED, ["revoked"], newer)
    (event,) = _events(caplog, "held_collateral_reloaded")
    assert event["amd_crls_stale"] == []
    assert list(event["amd_crls"]) == ["vcek-Milan"]  # type: ignore[call-overload]


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda d, s: (d / "notes.txt").write_text("x"), id="misnamed-file"),
        pytest.param(lambda d, s: (d / "vcek-Milan.crl").write_bytes(b"\x30\x03"), id="malformed"),
        pytest.param(lambda d, s: (d / "vcek-Genoa.crl").write_bytes(s.crl), id="wrong-issuer"),
        pytest.param(lambda d, s: shutil.rmtree(d), id="directory-gone"),
    ],
)
def test_a_bad_directory_changes_nothing(
    running: RunningBroker,
    setup: Setup,
    crl_dir: Path,
    caplog: pytest.LogCaptureFixture,
    spoil: object,
) -> None:
    """All or nothing: a directory that would stop the broker at start leaves the held lists
    as they were (the same snapshot object), and the failure is logged without any bytes."""
    appraiser = running.broker.appraiser
    assert isinstance(appraiser, CompositeAppraiser)
    before = appraiser.held
    spoil(crl_dir, setup)  # type: ignore[operator]
    with (
        caplog.at_level(logging.INFO, logger="lessee.broker"),
        pytest.raises(InputError, match="reload refused, the previous collateral is still"),
    ):
        running.reload_held_collateral()
    assert appraiser.held is before
    assert _cpu(running, setup) == (Status.AFFIRMING, [], setup.crl)
    (event,) = _events(caplog, "held_collateral_reload_failed")
    assert setup.crl.hex() not in json.dumps(event)


def test_a_reload_never_goes_back_to_an_older_list(
    running: RunningBroker, setup: Setup, crl_dir: Path
) -> None:
    """The held list revokes the ASK; a list made before it is refused."""
    newer = _revoking(setup, datetime.now(UTC))
    (crl_dir / "vcek-Milan.crl").write_bytes(newer)
    running.reload_held_collateral()
    (crl_dir / "vcek-Milan.crl").write_bytes(_older(setup))
    with pytest.raises(InputError, match=r"vcek-Milan: thisUpdate .* is older than the held"):
        running.reload_held_collateral()
    assert _cpu(running, setup) == (Status.CONTRAINDICATED, ["revoked"], newer)
    (crl_dir / "vcek-Milan.crl").write_bytes(newer)  # the same list again is no rollback
    running.reload_held_collateral()


def test_a_rollback_in_two_reloads_is_refused_too(
    running: RunningBroker, setup: Setup, crl_dir: Path
) -> None:
    """Drop the revoking list (allowed), then bring the older one back: nothing was held to
    compare with, so the list from before the revocation was held again and the revoked ASK's
    report affirmed. The newest list held since start still counts."""
    newer = _revoking(setup, datetime.now(UTC))
    (crl_dir / "vcek-Milan.crl").write_bytes(newer)
    running.reload_held_collateral()
    (crl_dir / "vcek-Milan.crl").unlink()
    assert running.reload_held_collateral().amd_crls_dropped == ("vcek-Milan",)
    (crl_dir / "vcek-Milan.crl").write_bytes(_older(setup))
    with pytest.raises(InputError, match=r"vcek-Milan: thisUpdate .* is older than the held"):
        running.reload_held_collateral()
    (crl_dir / "vcek-Milan.crl").write_bytes(newer)  # the newest list back is fine
    running.reload_held_collateral()
    assert _cpu(running, setup) == (Status.CONTRAINDICATED, ["revoked"], newer)


def test_a_dropped_list_is_reported_and_the_evidence_list_applies_again(
    running: RunningBroker, setup: Setup, crl_dir: Path
) -> None:
    (crl_dir / "vcek-Milan.crl").unlink()
    report = running.reload_held_collateral()
    assert report.amd_crls == {} and report.amd_crls_dropped == ("vcek-Milan",)
    assert _cpu(running, setup) == (Status.CONTRAINDICATED, ["missing"], None)


def test_an_appraisal_running_during_a_reload_keeps_its_snapshot(
    running: RunningBroker,
    setup: Setup,
    crl_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The list an appraisal checked is the list its entry archives, even when a reload lands
    in the middle: here the reload runs inside the appraisal, before the verifier starts."""
    real = appraiser_module.appraise_bundle  # type: ignore[attr-defined]
    newer = _revoking(setup, datetime.now(UTC))
    reloaded = threading.Event()

    def appraise_with_a_reload(*args: object, **kwargs: object) -> object:
        if not reloaded.is_set():
            (crl_dir / "vcek-Milan.crl").write_bytes(newer)
            running.reload_held_collateral()
            reloaded.set()
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(appraiser_module, "appraise_bundle", appraise_with_a_reload)
    assert _cpu(running, setup) == (Status.AFFIRMING, [], setup.crl)  # the snapshot it began with
    assert reloaded.is_set()
    assert _cpu(running, setup) == (Status.CONTRAINDICATED, ["revoked"], newer)


def test_a_stale_held_list_is_named_at_start(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "crls"
    d.mkdir()
    stale = setup.pki.amd_crl(at=setup.made - timedelta(days=30), revoked_serials=(7,))
    (d / "vcek-Milan.crl").write_bytes(stale)
    with caplog.at_level(logging.INFO, logger="lessee.broker"):
        broker = serve_broker(
            BrokerConfig(state_dir=tmp_path / "state", listen="127.0.0.1:0", amd_crls_dir=d)
        )
        broker.stop(0)
    (event,) = _events(caplog, "broker_started")
    assert event["held_amd_crls_stale"] == ["vcek-Milan"]
    assert list(event["held_amd_crls"]) == ["vcek-Milan"]  # type: ignore[call-overload]


def test_a_broker_with_another_appraiser_refuses_to_reload(running: RunningBroker) -> None:
    running.broker.appraiser = lambda *a: None  # type: ignore[assignment]
    with pytest.raises(InputError, match="not started with reloadable collateral"):
        running.reload_held_collateral()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX")
def test_sighup_reloads_the_serving_broker(setup: Setup, crl_dir: Path, tmp_path: Path) -> None:
    """``lessee broker serve`` in its own process: SIGHUP reloads; a refused reload keeps it
    serving (health over gRPC) with the lists it held; SIGTERM still stops it cleanly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli.main", "broker", "serve", "--state",
         str(tmp_path / "s"), "--listen", "127.0.0.1:0", "--amd-crls", str(crl_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    err: list[str] = []

    def refusal() -> str:
        """The next line the broker prints about a refused reload (JSON log lines kept)."""
        assert proc.stderr is not None
        while line := proc.stderr.readline():
            err.append(line)
            if line.startswith("lessee broker:"):
                return line.strip()
        raise AssertionError("".join(err))

    def serving(target: str) -> bool:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        target = line.split("listening on ")[1].split(" ")[0]
        (crl_dir / "vcek-Milan.crl").write_bytes(_revoking(setup, datetime.now(UTC)))
        proc.send_signal(signal.SIGHUP)
        assert proc.stdout.readline().strip() == "lessee broker: reloaded 0 RIM(s) and 1 AMD CRL(s)"
        (crl_dir / "vcek-Milan.crl").write_bytes(_older(setup))
        proc.send_signal(signal.SIGHUP)
        assert "is older than the held list" in refusal()
        assert serving(target)
        (crl_dir / "notes.txt").write_text("x")
        proc.send_signal(signal.SIGHUP)
        assert "not an AMD CRL file" in refusal()
        assert serving(target)
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        err.append(proc.stderr.read())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(err)
    events = [json.loads(x)["event"] for x in text.splitlines() if x.startswith("{")]
    assert events.count("held_collateral_reloaded") == 1
    assert events.count("held_collateral_reload_failed") == 2
    assert events[-1] == "broker_stopped"
    assert setup.crl.hex() not in text


def test_a_sighup_while_the_broker_starts_reloads_instead_of_killing_it(
    crl_dir: Path, tmp_path: Path
) -> None:
    """The handlers were installed only after the broker was serving: a SIGHUP in between (a
    cron job's ``fetch-amd-crls --notify-pid`` right after a restart) took the default action
    and killed it. Here the signal comes from inside the start itself."""
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        import agent.rpc.server as server
        real = server.serve_broker
        def serve_broker(config):
            os.kill(os.getpid(), signal.SIGHUP)
            return real(config)
        server.serve_broker = serve_broker
        from agent.cli.main import main
        sys.exit(main(["broker", "serve", "--state", {str(tmp_path / "s")!r},
                       "--listen", "127.0.0.1:0", "--amd-crls", {str(crl_dir)!r}]))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert "listening on 127.0.0.1:" in proc.stdout.readline()
        assert proc.stdout.readline().startswith("lessee broker: reloaded")
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
