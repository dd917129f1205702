"""RIM sources: local folders, NVIDIA's RIM service (a real HTTP server on loopback), chains."""

from __future__ import annotations

import base64
import errno
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.rim_fetch import (
    ChainedRimSource,
    DirectoryRimSource,
    OnlineRimSource,
    RimFetchError,
    decode_service_response,
    name_to_rim_id,
)
from attest.errors import InputError
from attest.nvidia.rim import MAX_RIM_BYTES, RimSelectionError, parse_rim
from tests.conftest import NVIDIA
from tests.nvidia.test_rim import DRIVER, VBIOS, VBIOS_PROD

DRIVER_ID = "NV_GPU_DRIVER_GH100_545.00"
VBIOS_ID = "NV_GPU_VBIOS_1010_0200_882_96005E0001"


def test_name_to_rim_id() -> None:
    assert name_to_rim_id("NV_GPU_DRIVER_GH100_550.144.03.xml") == "NV_GPU_DRIVER_GH100_550.144.03"
    assert name_to_rim_id("1010_0200_882_96005E0001_PROD.swidtag") == VBIOS_ID
    assert (
        name_to_rim_id("g520_0228_889_96006D0029_PROD.swidtag")
        == "NV_GPU_VBIOS_G520_0228_889_96006D0029"
    )
    assert name_to_rim_id("1010_0200_882_96005E0001_test_no_gpu.swidtag") == VBIOS_ID
    assert name_to_rim_id("Driver_RIM_test_no_gpu.swidtag") is None
    assert name_to_rim_id("NV_../../etc.xml") is None


def test_directory_source_over_the_test_rims() -> None:
    src = DirectoryRimSource([NVIDIA / "rims" / "test_no_gpu"])
    assert len(src.files) == 2
    assert src.rim_bytes(DRIVER_ID) == DRIVER.read_bytes()
    assert src.rim_bytes(VBIOS_ID) == VBIOS.read_bytes()
    assert src.rim_bytes("NV_GPU_DRIVER_GH100_550.90.07") is None
    assert src.skipped == ()


def test_directory_source_over_all_rims_names_the_ambiguity() -> None:
    src = DirectoryRimSource([NVIDIA / "rims"])
    assert len(src.files) == 26
    with pytest.raises(RimSelectionError, match="named NV_GPU_VBIOS_1010_0200_882_96005E0001"):
        src.rim_bytes(VBIOS_ID)
    assert src.rim_bytes("NV_GPU_VBIOS_1010_0205_862_96005E0002") is not None
    # a VBIOS RIM named for one board is not found for another board with the same version
    assert src.rim_bytes("NV_GPU_VBIOS_G520_0200_885_96005E0002") is None


def test_directory_source_files_and_junk(tmp_path: Path) -> None:
    (tmp_path / "junk.xml").write_bytes(b"<not-a-rim/>")
    (tmp_path / "big.swidtag").write_bytes(b" " * (MAX_RIM_BYTES + 1))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "NV_GPU_DRIVER_GH100_550.90.07.xml").write_bytes(DRIVER.read_bytes())  # misnamed
    src = DirectoryRimSource([tmp_path, VBIOS_PROD])
    assert src.rim_bytes(VBIOS_ID) == VBIOS_PROD.read_bytes()
    assert src.rim_bytes("NV_GPU_DRIVER_GH100_550.90.07") is None  # name and content disagree
    assert src.rim_bytes(DRIVER_ID) == DRIVER.read_bytes()  # but the content still answers
    skipped = {Path(label).name if "/" in label else label for label, _ in src.skipped}
    assert {"big.swidtag", "NV_GPU_DRIVER_GH100_550.90.07"} <= skipped
    assert len(src.skipped) == 3


def test_directory_source_missing_path() -> None:
    with pytest.raises(InputError):
        DirectoryRimSource([NVIDIA / "no-such-folder"])


# ---------------------------------------------------------------------------------------------
# the online source against a real HTTP server on 127.0.0.1


class _Service:
    def __init__(self) -> None:
        self.rims: dict[str, bytes] = {DRIVER_ID: DRIVER.read_bytes(), VBIOS_ID: VBIOS.read_bytes()}
        self.requests: list[str] = []
        self.override: Callable[[BaseHTTPRequestHandler], bool] | None = None


@pytest.fixture
def service() -> Iterator[tuple[_Service, str]]:
    state = _Service()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            if state.override is not None and state.override(self):
                return
            rim_id = self.path.rsplit("/", 1)[-1]
            data = state.rims.get(rim_id)
            if data is None:
                self.send_error(404)
                return
            body = json.dumps(
                {
                    "id": rim_id,
                    "rim": base64.b64encode(data).decode(),
                    "rim_format": "TCG",
                    "request_id": "test",
                    "last_updated": "2024-01-01T00:00:00",
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/v1/rim/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_online_source_fetches_and_caches(service: tuple[_Service, str], tmp_path: Path) -> None:
    state, url = service
    src = OnlineRimSource(url, timeout=5, cache_dir=tmp_path / "cache")
    assert src.rim_bytes(DRIVER_ID) == DRIVER.read_bytes()
    assert state.requests == [f"/v1/rim/{DRIVER_ID}"]
    assert (tmp_path / "cache" / f"{DRIVER_ID}.xml").read_bytes() == DRIVER.read_bytes()
    assert src.rim_bytes(DRIVER_ID.lower()) == DRIVER.read_bytes()  # answered from the cache
    assert len(state.requests) == 1
    assert (
        OnlineRimSource(url, cache_dir=tmp_path / "cache").rim_bytes(DRIVER_ID)
        == DRIVER.read_bytes()
    )
    assert len(state.requests) == 1  # another process reuses the disk cache
    assert src.rim_bytes("NV_GPU_DRIVER_GH100_1.0") is None  # 404
    assert not (tmp_path / "cache" / "NV_GPU_DRIVER_GH100_1.0.xml").exists()


def test_damaged_cache_entry_is_refetched(service: tuple[_Service, str], tmp_path: Path) -> None:
    state, url = service
    (tmp_path / f"{VBIOS_ID}.xml").write_bytes(b"<damaged")
    src = OnlineRimSource(url, cache_dir=tmp_path)
    assert src.rim_bytes(VBIOS_ID) == VBIOS.read_bytes()
    assert len(state.requests) == 1
    assert (tmp_path / f"{VBIOS_ID}.xml").read_bytes() == VBIOS.read_bytes()


def _reply(
    status: int, body: bytes, headers: dict[str, str] | None = None
) -> Callable[[BaseHTTPRequestHandler], bool]:
    def handler(h: BaseHTTPRequestHandler) -> bool:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        return True

    return handler


@pytest.mark.parametrize(
    ("status", "body", "headers", "match"),
    [
        (500, b"oops", None, "HTTP 500"),
        (200, b"not json", None, "not JSON"),
        (200, b'{"id": "x"}', None, "no 'rim'"),
        (
            200,
            json.dumps({"id": "NV_GPU_DRIVER_GH100_1.0", "rim": "AAAA"}).encode(),
            None,
            "answered for",
        ),
        (200, json.dumps({"rim": "AAAA"}).encode(), None, "answered for 'None'"),  # no id
        (200, json.dumps({"id": DRIVER_ID, "rim": "!!!"}).encode(), None, "not base64"),
        (
            200,
            json.dumps({"id": DRIVER_ID, "rim": base64.b64encode(b"<x/>").decode()}).encode(),
            None,
            "not a valid RIM",
        ),
        (
            200,
            json.dumps({"id": DRIVER_ID, "rim": "AAAA", "rim_format": "CORIM"}).encode(),
            None,
            "CORIM",
        ),
        (302, b"", {"Location": "http://127.0.0.1:9/elsewhere"}, "HTTP 302"),
    ],
)
def test_online_source_refuses_bad_answers(
    service: tuple[_Service, str],
    tmp_path: Path,
    status: int,
    body: bytes,
    headers: dict[str, str] | None,
    match: str,
) -> None:
    state, url = service
    state.override = _reply(status, body, headers)
    src = OnlineRimSource(url, timeout=5, cache_dir=tmp_path)
    with pytest.raises(RimFetchError, match=match) as err:
        src.rim_bytes(DRIVER_ID)
    assert err.value.reason == "rim_unavailable"
    assert list(tmp_path.iterdir()) == []  # nothing cached


def test_online_source_times_out(service: tuple[_Service, str]) -> None:
    state, url = service

    def slow(h: BaseHTTPRequestHandler) -> bool:
        time.sleep(1.0)
        return _reply(404, b"")(h)

    state.override = slow
    with pytest.raises(RimFetchError, match="unreachable"):
        OnlineRimSource(url, timeout=0.2).rim_bytes(DRIVER_ID)


def test_online_source_unreachable() -> None:
    with pytest.raises(RimFetchError):
        OnlineRimSource("http://127.0.0.1:9/v1/rim/", timeout=2).rim_bytes(DRIVER_ID)


def test_online_source_requires_https_off_loopback() -> None:
    with pytest.raises(InputError):
        OnlineRimSource("http://rim.attestation.nvidia.com/v1/rim/")
    assert OnlineRimSource().base_url == "https://rim.attestation.nvidia.com/v1/rim/"


def test_online_source_refuses_path_tricks(service: tuple[_Service, str]) -> None:
    state, url = service
    with pytest.raises(RimSelectionError):
        OnlineRimSource(url).rim_bytes("../../etc/passwd")
    assert state.requests == []


def test_decode_service_response_returns_the_exact_rim_bytes() -> None:
    body = json.dumps(
        {"id": DRIVER_ID, "rim": base64.b64encode(DRIVER.read_bytes()).decode()}
    ).encode()
    data = decode_service_response(body, DRIVER_ID)
    assert data == DRIVER.read_bytes()
    assert parse_rim(data).version == "545.00"


def test_chained_source_asks_in_order(service: tuple[_Service, str]) -> None:
    state, url = service
    local = DirectoryRimSource([VBIOS_PROD])
    chained = ChainedRimSource(local, OnlineRimSource(url))
    assert chained.rim_bytes(VBIOS_ID) == VBIOS_PROD.read_bytes()  # local wins
    assert state.requests == []
    assert chained.rim_bytes(DRIVER_ID) == DRIVER.read_bytes()  # falls through to the service
    assert len(state.requests) == 1
    assert chained.rim_bytes("NV_GPU_DRIVER_GH100_1.0") is None
    with pytest.raises(InputError):
        ChainedRimSource()


def test_a_cache_that_cannot_be_written_keeps_the_fetched_rim(
    service: tuple[_Service, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only or full file system (simulated: root ignores a 0500 directory) costs a
    fetch next time; the RIM in hand, already parsed, is still returned."""
    import agent.rim_fetch as rim_fetch

    def read_only(path: Path, data: bytes, **kw: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(rim_fetch, "write_atomically", read_only)
    state, url = service
    src = OnlineRimSource(url, timeout=5, cache_dir=tmp_path)
    assert src.rim_bytes(DRIVER_ID) == DRIVER.read_bytes()
    assert src.rim_bytes(DRIVER_ID) == DRIVER.read_bytes()
    assert len(state.requests) == 2  # nothing was cached


def test_a_cache_directory_that_cannot_be_made_keeps_the_fetched_rim(
    service: tuple[_Service, str], tmp_path: Path
) -> None:
    (tmp_path / "file").write_bytes(b"")
    _, url = service
    src = OnlineRimSource(url, timeout=5, cache_dir=tmp_path / "file" / "cache")
    assert src.rim_bytes(DRIVER_ID) == DRIVER.read_bytes()


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink-loop"])
def test_a_cache_entry_that_is_not_a_file_is_a_miss(
    service: tuple[_Service, str], tmp_path: Path, kind: str
) -> None:
    state, url = service
    entry = tmp_path / f"{DRIVER_ID}.xml"
    if kind == "directory":
        entry.mkdir()
        (entry / "x").write_text("x")  # not empty: the new RIM cannot replace it either
    elif kind == "fifo":
        os.mkfifo(entry)  # a blocking open would wait for a writer forever
    else:
        os.symlink(entry.name, entry)
    start = time.monotonic()
    assert OnlineRimSource(url, timeout=5, cache_dir=tmp_path).rim_bytes(DRIVER_ID) == (
        DRIVER.read_bytes()
    )
    assert time.monotonic() - start < 2.0
    assert len(state.requests) == 1


def test_deeply_nested_json_is_the_typed_error(service: tuple[_Service, str]) -> None:
    """It once escaped as a RecursionError from ``json.loads``."""
    state, url = service
    state.override = _reply(200, b"[" * 100_000, {"Content-Type": "application/json"})
    with pytest.raises(RimFetchError, match="not JSON"):
        OnlineRimSource(url, timeout=5).rim_bytes(DRIVER_ID)
    for body in (b"[" * 100_000, b'{"rim": ' * 5000, b"\xff\xfe{}"):
        with pytest.raises(RimFetchError, match="not JSON"):
            decode_service_response(body, DRIVER_ID)


def test_cache_entries_are_public_files(service: tuple[_Service, str], tmp_path: Path) -> None:
    """RIMs are public, signed documents: 0644, like the files NVIDIA serves."""
    _, url = service
    OnlineRimSource(url, timeout=5, cache_dir=tmp_path).rim_bytes(DRIVER_ID)
    assert (tmp_path / f"{DRIVER_ID}.xml").stat().st_mode & 0o777 == 0o644


def test_a_rim_is_taken_only_as_the_id_it_names(
    service: tuple[_Service, str], tmp_path: Path
) -> None:
    """The folder source refused a RIM whose content is another kind, product or version than
    its name; the service and the cache did not: a Hopper driver RIM answered (or cached, or
    linked into a shared cache) under a Blackwell id was served for it. Now the service's
    answer and a cache entry must hold the RIM the id names, and a cache entry is not read
    through a symlink."""
    state, url = service
    data = DRIVER.read_bytes()  # GH100 545.00
    other = "NV_GPU_CC_DRIVER_GB100_545.00"
    body = json.dumps({"id": other, "rim": base64.b64encode(data).decode()}).encode()
    state.override = _reply(200, body, None)
    src = OnlineRimSource(url, timeout=5, cache_dir=tmp_path)
    with pytest.raises(RimFetchError, match="not the RIM the id names"):
        src.rim_bytes(other)
    state.override = None
    state.rims[DRIVER_ID] = data
    # A cache entry holding another RIM is a miss (the service is asked, and answers 404).
    (tmp_path / f"{other}.xml").write_bytes(data)
    assert src.rim_bytes(other) is None
    # A symlink in the cache is a miss too, even to the right RIM.
    linked = tmp_path / "elsewhere.xml"
    linked.write_bytes(data)
    (tmp_path / f"{DRIVER_ID}.xml").symlink_to(linked)
    before = len(state.requests)
    assert src.rim_bytes(DRIVER_ID) == data  # fetched from the service instead
    assert len(state.requests) == before + 1
