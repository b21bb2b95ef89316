"""WeightsStore against a real local HTTP server: cache, verification, resume, locks, fallbacks."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from models.errors import InvalidOptionError, WeightsUnavailableError, WeightsVerificationError
from models.registry import NcnnSource, WeightsSource
from models.weights import FetchedWeights, WeightsStore, sha256_file
from tests.httpserver import FileServer, unused_port

DATA = random.Random(0).randbytes(3 * 2**20 + 123)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "w.pth"
CONVERTED = b"converted safetensors stand-in " * 1000
CONVERTED_SHA = hashlib.sha256(CONVERTED).hexdigest()
WRONG_SHA = "0" * 64


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # An HTTP proxy from the environment would otherwise intercept 127.0.0.1.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer({NAME: DATA}) as srv:
        yield srv


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def store_for(cache: Path, **kwargs: object) -> WeightsStore:
    options: dict = {"timeout_s": 5.0, "retries": 2, "backoff_s": 0.0, **kwargs}
    return WeightsStore(cache, **options)


def source_for(url: str, sha: str | None = SHA, **kwargs: object) -> WeightsSource:
    options: dict = {"size": len(DATA), **kwargs}
    return WeightsSource(filename=NAME, sha256=sha, urls=(url,), **options)


def visible(cache: Path) -> list[str]:
    """Files in the cache other than lock files."""
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))


def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# --- download and cache -----------------------------------------------------------------------


def test_good_hash_is_cached_and_reused_without_a_second_request(
    server: FileServer, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="models.weights")
    source = source_for(server.url(NAME))
    store = store_for(cache)
    assert store.cached(source) is None

    first = store.fetch(source)
    assert first == FetchedWeights(cache / NAME, "url", server.url(NAME))
    assert first.path.read_bytes() == DATA
    assert visible(cache) == [NAME]
    assert f"served from url {server.url(NAME)} ({len(DATA)} bytes" in caplog.text

    again = store_for(cache).fetch(source)  # a new store, as another replica would have
    assert again == FetchedWeights(cache / NAME, "cache", str(cache / NAME))
    assert store.cached(source) == again
    assert server.count() == 1


def test_bad_hash_raises_and_leaves_nothing_visible(server: FileServer, cache: Path) -> None:
    source = source_for(server.url(NAME), sha=WRONG_SHA)
    with pytest.raises(WeightsVerificationError, match=f"{server.url(NAME)}.*expected {WRONG_SHA}"):
        store_for(cache).fetch(source)
    assert visible(cache) == []
    assert server.count() == 1  # wrong bytes from a fresh download are not retried


def test_size_announced_by_the_server_is_checked_before_downloading(
    server: FileServer, cache: Path
) -> None:
    source = source_for(server.url(NAME), size=len(DATA) + 1)
    with pytest.raises(WeightsVerificationError, match=f"server reports {len(DATA)} bytes"):
        store_for(cache).fetch(source)
    assert visible(cache) == []


def test_truncated_transfer_is_resumed_with_range(server: FileServer, cache: Path) -> None:
    cut = 1_000_000
    server.fail(NAME, truncate_after=cut)
    hit = store_for(cache).fetch(source_for(server.url(NAME)))
    assert hit.origin == "url"
    assert sha256_file(hit.path) == SHA
    assert [(r.range, r.status) for r in server.requests(NAME)] == [
        (None, 200),
        (f"bytes={cut}-", 206),
    ]
    assert visible(cache) == [NAME]


def test_truncated_transfer_restarts_when_the_server_ignores_range(cache: Path) -> None:
    with FileServer({NAME: DATA}, honour_range=False) as server:
        server.fail(NAME, truncate_after=500_000)
        hit = store_for(cache).fetch(source_for(server.url(NAME)))
        assert sha256_file(hit.path) == SHA
        assert [(r.range, r.status) for r in server.requests(NAME)] == [
            (None, 200),
            ("bytes=500000-", 200),
        ]


def test_stale_partial_file_with_wrong_bytes_is_discarded(server: FileServer, cache: Path) -> None:
    cache.mkdir()
    (cache / f"{NAME}.part").write_bytes(b"x" * 1000)
    hit = store_for(cache).fetch(source_for(server.url(NAME)))
    assert hit.path.read_bytes() == DATA
    assert [r.range for r in server.requests(NAME)] == ["bytes=1000-", None]
    assert visible(cache) == [NAME]


def test_server_errors_are_retried(server: FileServer, cache: Path) -> None:
    server.fail(NAME, status=503, times=2)
    hit = store_for(cache, retries=2).fetch(source_for(server.url(NAME)))
    assert hit.path.read_bytes() == DATA
    assert [r.status for r in server.requests(NAME)] == [503, 503, 200]


def test_retry_after_is_honoured_within_the_cap(server: FileServer, cache: Path) -> None:
    server.fail(NAME, status=429, headers={"Retry-After": "1"})  # backoff_s is 0 here
    server.fail(NAME, status=503, headers={"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"})
    started = time.monotonic()
    hit = store_for(cache, retries=2).fetch(source_for(server.url(NAME)))
    assert hit.path.read_bytes() == DATA
    assert [r.status for r in server.requests(NAME)] == [429, 503, 200]
    assert 1.0 <= time.monotonic() - started < 10  # a date is no hint (read, it would wait 30 s)


def test_not_found_is_not_retried(server: FileServer, cache: Path) -> None:
    url = server.url("missing.pth")
    with pytest.raises(WeightsUnavailableError, match=f"url {url}: HTTP 404"):
        store_for(cache, retries=3).fetch(source_for(url))
    assert server.count() == 1


def test_server_down_names_the_url(cache: Path) -> None:
    url = f"http://127.0.0.1:{unused_port()}/{NAME}"
    with pytest.raises(WeightsUnavailableError) as info:
        store_for(cache, retries=1).fetch(source_for(url))
    message = str(info.value)
    assert f"url {url}: ConnectionRefusedError" in message
    assert "(after 2 attempts)" in message
    assert visible(cache) == []


def test_stalled_server_times_out(server: FileServer, cache: Path) -> None:
    server.hold()
    try:
        with pytest.raises(WeightsUnavailableError, match="timed out"):
            store_for(cache, timeout_s=0.1, retries=0).fetch(source_for(server.url(NAME)))
    finally:
        server.release()
    assert visible(cache) == []


def test_corrupt_cached_file_is_removed_and_refetched(server: FileServer, cache: Path) -> None:
    cache.mkdir()
    (cache / NAME).write_bytes(bytes(len(DATA)))  # right size, wrong hash
    store = store_for(cache)
    assert store.cached(source_for(server.url(NAME))) is None
    hit = store.fetch(source_for(server.url(NAME)))
    assert hit.origin == "url"
    assert hit.path.read_bytes() == DATA
    assert server.count() == 1


def test_corrupt_cached_file_is_removed_even_when_no_source_works(cache: Path) -> None:
    cache.mkdir()
    (cache / NAME).write_bytes(b"garbage")
    url = f"http://127.0.0.1:{unused_port()}/{NAME}"
    with pytest.raises(WeightsUnavailableError):
        store_for(cache, retries=0).fetch(source_for(url))
    assert visible(cache) == []


# --- sources and their order ------------------------------------------------------------------


def test_mirror_is_tried_before_the_url(server: FileServer, cache: Path) -> None:
    server.files[f"mirror/{NAME}"] = DATA
    store = store_for(cache, mirrors=[f"{server.base_url}/mirror/"])
    hit = store.fetch(source_for(server.url("upstream.pth")))
    assert hit == FetchedWeights(cache / NAME, "mirror", server.url(f"mirror/{NAME}"))
    assert server.count("upstream.pth") == 0


def test_missing_mirror_falls_back_to_the_url(server: FileServer, cache: Path) -> None:
    store = store_for(cache, mirrors=[f"{server.base_url}/empty"])
    hit = store.fetch(source_for(server.url(NAME)))
    assert hit.origin == "url"
    assert [r.name for r in server.requests()] == [f"empty/{NAME}", NAME]


def test_unpinned_source_is_never_downloaded(server: FileServer, cache: Path) -> None:
    url = server.url(NAME)
    with pytest.raises(WeightsUnavailableError) as info:
        store_for(cache).fetch(source_for(url, sha=None))
    assert f"no sha256 pinned for URL {url}; configure one" in str(info.value)
    assert server.count() == 0


def test_downloads_can_be_disabled(server: FileServer, cache: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="downloads are disabled"):
        store_for(cache, allow_download=False).fetch(source_for(server.url(NAME)))
    assert server.count() == 0


def test_source_without_any_location_says_so(cache: Path) -> None:
    source = WeightsSource(filename=NAME, sha256=SHA)
    with pytest.raises(WeightsUnavailableError, match="no path, URL, mirror or offline source"):
        store_for(cache).fetch(source)


@pytest.mark.parametrize("name", ["../w.pth", "a/b.pth", "", "w.pth.part"])
def test_unsafe_filenames_are_refused(cache: Path, name: str) -> None:
    with pytest.raises(WeightsUnavailableError, match="invalid weights filename"):
        store_for(cache).fetch(WeightsSource(filename=name, sha256=SHA))


def test_invalid_settings_are_refused(cache: Path) -> None:
    with pytest.raises(InvalidOptionError, match="retries must be 0 or more"):
        WeightsStore(cache, retries=-1)
    with pytest.raises(InvalidOptionError, match="timeout_s must be greater than 0"):
        WeightsStore(cache, timeout_s=0)


# --- user path --------------------------------------------------------------------------------


def test_user_path_is_verified_and_used_in_place(tmp_path: Path, cache: Path) -> None:
    user_file = tmp_path / "mine.pth"
    user_file.write_bytes(DATA)
    source = WeightsSource(filename=NAME, sha256=SHA, path=str(user_file))
    store = store_for(cache)
    assert store.fetch(source) == FetchedWeights(user_file, "path", str(user_file))
    assert store.cached(source) == FetchedWeights(user_file, "path", str(user_file))
    assert visible(cache) == []


def test_user_path_that_does_not_match_raises(
    tmp_path: Path, cache: Path, server: FileServer
) -> None:
    user_file = tmp_path / "mine.pth"
    user_file.write_bytes(DATA[:-1] + b"!")
    source = WeightsSource(filename=NAME, sha256=SHA, path=str(user_file), urls=(server.url(NAME),))
    with pytest.raises(WeightsVerificationError, match=f"user file {user_file}.*expected {SHA}"):
        store_for(cache).fetch(source)
    assert server.count() == 0
    assert visible(cache) == []


def test_missing_user_path_is_reported(tmp_path: Path, cache: Path) -> None:
    missing = tmp_path / "nope.pth"
    source = WeightsSource(filename=NAME, sha256=SHA, path=str(missing))
    with pytest.raises(WeightsUnavailableError, match=f"path {missing}: not found"):
        store_for(cache).fetch(source)


# --- offline conversion -----------------------------------------------------------------------


class FakeConverter:
    def __init__(self, payload: bytes = CONVERTED, error: Exception | None = None) -> None:
        self.payload = payload
        self.error = error
        self.calls: list[tuple[NcnnSource, Path]] = []

    def __call__(self, source: NcnnSource, dest: Path) -> None:
        self.calls.append((source, dest))
        if self.error is not None:
            raise self.error
        dest.write_bytes(self.payload)


def offline_source(url: str, ncnn_sha: str = CONVERTED_SHA) -> WeightsSource:
    ncnn = NcnnSource("fake_pkg", "FAKE_UP4X", "RRDBNet", ncnn_sha)
    return WeightsSource(filename=NAME, sha256=SHA, size=len(DATA), urls=(url,), ncnn=ncnn)


def test_offline_converter_serves_when_urls_fail(server: FileServer, cache: Path) -> None:
    converter = FakeConverter()
    source = offline_source(server.url("gone.pth"))
    store = store_for(cache, converter=converter)
    hit = store.fetch(source)
    assert hit == FetchedWeights(cache / "w.ncnn.safetensors", "offline", "fake_pkg:FAKE_UP4X")
    assert hit.path.read_bytes() == CONVERTED
    assert [s for s, _ in converter.calls] == [source.ncnn]
    assert visible(cache) == ["w.ncnn.safetensors"]

    again = store_for(cache, converter=converter).fetch(source)
    assert again.origin == "cache"
    assert again.path == hit.path
    assert len(converter.calls) == 1
    assert server.count() == 1  # the cached conversion is used before any network source


def test_offline_converter_with_wrong_bytes_fails_verification(
    server: FileServer, cache: Path
) -> None:
    converter = FakeConverter(payload=CONVERTED + b"?")
    with pytest.raises(
        WeightsVerificationError, match=f"offline fake_pkg:FAKE_UP4X: .*{CONVERTED_SHA}"
    ):
        store_for(cache, converter=converter).fetch(offline_source(server.url("gone.pth")))
    assert len(converter.calls) == 1
    assert visible(cache) == []


def test_offline_converter_failure_is_listed_with_the_urls(server: FileServer, cache: Path) -> None:
    converter = FakeConverter(error=ModuleNotFoundError("No module named 'fake_pkg'"))
    url = server.url("gone.pth")
    with pytest.raises(WeightsUnavailableError) as info:
        store_for(cache, converter=converter).fetch(offline_source(url))
    message = str(info.value)
    assert f"url {url}: HTTP 404" in message
    assert "offline fake_pkg:FAKE_UP4X: ModuleNotFoundError: No module named 'fake_pkg'" in message
    assert visible(cache) == []


def test_offline_source_without_a_real_pin_is_not_converted(
    server: FileServer, cache: Path
) -> None:
    converter = FakeConverter()
    with pytest.raises(WeightsUnavailableError, match="no sha256 pinned for the converted file"):
        store_for(cache, converter=converter).fetch(offline_source(server.url("x"), "TODO"))
    assert converter.calls == []


def test_url_is_preferred_to_the_offline_conversion(server: FileServer, cache: Path) -> None:
    converter = FakeConverter()
    hit = store_for(cache, converter=converter).fetch(offline_source(server.url(NAME)))
    assert hit.origin == "url"
    assert converter.calls == []


# --- concurrency ------------------------------------------------------------------------------


class _SetOnWait(logging.Handler):
    """Sets an event when the store logs that it waits for another fetcher's lock."""

    def __init__(self, event: threading.Event) -> None:
        super().__init__(logging.INFO)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("waiting for another fetch"):
            self.event.set()


def test_two_threads_download_once(server: FileServer, cache: Path) -> None:
    waiting = threading.Event()
    logger = logging.getLogger("models.weights")
    handler = _SetOnWait(waiting)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    store = store_for(cache)  # one store shared by both threads: it must hold no per-call state
    source = source_for(server.url(NAME))
    results: list[FetchedWeights] = []
    server.hold()
    try:
        first = threading.Thread(target=lambda: results.append(store.fetch(source)))
        first.start()
        wait_until(lambda: server.count() == 1)  # the first holds the lock, its response held
        second = threading.Thread(target=lambda: results.append(store.fetch(source)))
        second.start()
        assert waiting.wait(15), "the second fetch did not wait for the lock"
    finally:
        server.release()
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    first.join(15)
    second.join(15)
    assert sorted(r.origin for r in results) == ["cache", "url"]
    assert {r.path for r in results} == {cache / NAME}
    assert sha256_file(cache / NAME) == SHA
    assert server.count() == 1


def _fetch_in_process(cache: str, url: str, waiting: threading.Event, out: queue.Queue) -> None:
    logger = logging.getLogger("models.weights")
    logger.setLevel(logging.INFO)
    logger.addHandler(_SetOnWait(waiting))
    hit = WeightsStore(Path(cache), timeout_s=15.0, retries=0).fetch(source_for(url))
    out.put((hit.origin, str(hit.path)))


def test_two_processes_download_once(server: FileServer, cache: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    first_waits, second_waits = ctx.Event(), ctx.Event()
    url = server.url(NAME)
    server.hold()
    try:
        first = ctx.Process(target=_fetch_in_process, args=(str(cache), url, first_waits, out))
        first.start()
        wait_until(lambda: server.count() == 1, timeout_s=60)
        second = ctx.Process(target=_fetch_in_process, args=(str(cache), url, second_waits, out))
        second.start()
        assert second_waits.wait(60), "the second process did not wait for the lock"
    finally:
        server.release()
    results = sorted([out.get(timeout=30), out.get(timeout=30)])
    first.join(30)
    second.join(30)
    assert (first.exitcode, second.exitcode) == (0, 0)
    assert results == [("cache", str(cache / NAME)), ("url", str(cache / NAME))]
    assert not first_waits.is_set()
    assert sha256_file(cache / NAME) == SHA
    assert server.count() == 1
