"""The web page at ``/`` in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright's Python API; never a downloaded browser) against the session's real app and S3.

Screenshots go to ``.run/test-output/web/``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image as PILImage

from tests.conftest import RUN_DIR
from tests.test_api import encode, noise

pytestmark = pytest.mark.serve

CHROMIUM = Path("/usr/bin/chromium")
# The flags that work headless on these machines (no sandbox as root, no background networking).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = RUN_DIR / "test-output" / "web"
TIMEOUT_MS = 120_000

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium when run as root",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev group) missing")


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1100, "height": 900},
        )
        yield context
        context.close()


@pytest.fixture
def page(browser_context: Any, serve_app) -> Iterator[Any]:
    page = browser_context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{serve_app.url}/")
    page.wait_for_selector("#model option[value='tiny-x4']", state="attached")
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def png_file(tmp_path: Path, name: str, width: int, height: int) -> Path:
    path = tmp_path / name
    path.write_bytes(encode(noise(height, width, seed=12)))
    return path


def test_the_page_and_its_assets_are_open_and_local(serve_app) -> None:
    with serve_app.client() as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assets = [client.get(f"/static/{name}") for name in ("app.js", "app.css")]
        assert [a.status_code for a in assets] == [200, 200]
        assert assets[0].headers["content-type"].startswith("text/javascript")
        assert client.get("/static/missing.js").status_code == 404
        assert client.get("/static/..%2Fweb.py").status_code == 404
        schema = client.get("/openapi.json").json()
    for text in (page.text, *(a.text for a in assets)):
        assert "http://" not in text and "https://" not in text  # nothing from the network
    assert "/" not in schema["paths"] and not any(p.startswith("/static") for p in schema["paths"])


def test_upload_progress_compare_and_download(page: Any, serve_app, tmp_path: Path) -> None:
    page.select_option("#model", "tiny-x4")
    page.select_option("#scale", "2")
    page.set_input_files("#files", str(png_file(tmp_path, "small.png", 24, 16)))
    job = page.locator(".job").first
    job.locator("progress").wait_for(state="attached")
    sync_api.expect(job).to_have_attribute("data-status", "succeeded", timeout=TIMEOUT_MS)
    sync_api.expect(job.locator(".after")).to_have_js_property("complete", True)
    page.wait_for_function(
        "() => document.querySelector('.job .after').naturalWidth === 48"
        " && document.querySelector('.job .before').naturalWidth === 24"
    )

    # The slider moves the split, with the keyboard too.
    slider = job.locator("input[type=range].slider")
    frame = job.locator(".frame")
    split = "e => getComputedStyle(e).getPropertyValue('--split').trim()"
    assert frame.evaluate(split) == "50%"
    slider.focus()
    page.keyboard.press("Home")
    assert slider.input_value() == "0" and frame.evaluate(split) == "0%"
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    assert slider.input_value() == "3" and frame.evaluate(split) == "3%"
    slider.fill("70")
    assert frame.evaluate(split) == "70%"
    # Both images are laid out at the same size: the same zoom.
    boxes = [job.locator(sel).bounding_box() for sel in (".before", ".after")]
    assert boxes[0] == boxes[1]

    # The download link is the job's presigned result URL.
    job_id = job.get_attribute("data-job-id")
    with serve_app.client() as client:
        record = client.get(f"/v1/jobs/{job_id}").json()
    href = job.locator("a.download").get_attribute("href")
    assert urlsplit(href).path == urlsplit(record["result"]["url"]).path
    assert "X-Amz-Signature=" in href
    got = httpx.get(href)  # no credentials: the presigned URL is the key
    assert got.status_code == 200
    assert PILImage.open(io.BytesIO(got.content)).size == (48, 32)
    page.screenshot(path=str(SHOTS / "result.png"), full_page=True)


def test_a_text_file_is_refused_with_a_clear_message(page: Any, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    page.set_input_files("#files", str(text))
    job = page.locator(".job").first
    sync_api.expect(job).to_have_attribute("data-status", "error", timeout=TIMEOUT_MS)
    assert job.get_attribute("data-code") == "unsupported_media_type"
    sync_api.expect(job.locator(".job-status")).to_contain_text(
        "isn't an image the service can read"
    )
    page.screenshot(path=str(SHOTS / "unsupported.png"), full_page=True)


def test_overload_says_when_to_retry(page: Any, tmp_path: Path) -> None:
    body = {"error": {"code": "overloaded", "message": "the service is at capacity"}}
    page.route(
        "**/v1/jobs",
        lambda route: route.fulfill(
            status=503, body=json.dumps(body), headers={"Retry-After": "7"}
        ),
    )
    page.set_input_files("#files", str(png_file(tmp_path, "busy.png", 8, 8)))
    job = page.locator(".job").first
    sync_api.expect(job.locator(".job-status")).to_contain_text("busy")
    sync_api.expect(job.locator(".job-status")).to_contain_text("Try again in 7 s")
    sync_api.expect(job.locator("button.retry")).to_be_visible()


def test_the_api_key_is_kept_and_sent(page: Any) -> None:
    sent: list[str | None] = []
    page.on(
        "request",
        lambda r: sent.append(r.headers.get("authorization")) if "/v1/" in r.url else None,
    )
    page.fill("#api-key", "sk-test-123")
    page.press("#api-key", "Tab")  # change → stored, models listed again with the key
    page.wait_for_function("() => localStorage.getItem('superres.apiKey') === 'sk-test-123'")
    page.reload()
    sync_api.expect(page.locator("#api-key")).to_have_value("sk-test-123")
    page.wait_for_selector("#model option[value='tiny-x4']", state="attached")
    assert "Bearer sk-test-123" in sent
    page.fill("#api-key", "")
    page.press("#api-key", "Tab")
    page.wait_for_function("() => localStorage.getItem('superres.apiKey') === null")


def test_phone_width(page: Any, tmp_path: Path) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    # a loaded model is preselected (which one depends on what earlier tests loaded)
    assert page.locator("#model").input_value()
    page.select_option("#model", "tiny-x4")
    page.set_input_files("#files", str(png_file(tmp_path, "phone.png", 20, 30)))
    job = page.locator(".job").first
    sync_api.expect(job).to_have_attribute("data-status", "succeeded", timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.querySelector('.job .after').naturalWidth > 0")
    page.screenshot(path=str(SHOTS / "phone.png"), full_page=True)
    wide = page.evaluate(
        "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 390)"
        ".map(e => e.tagName + '.' + e.className + ':' + e.getBoundingClientRect().right)"
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, wide  # no sideways scroll
    assert job.locator(".slider").bounding_box()["width"] > 150
    page.screenshot(path=str(SHOTS / "phone.png"), full_page=True)


def test_a_missing_key_is_explained(page: Any) -> None:
    body = {"error": {"code": "unauthorized", "message": "missing API key"}}
    page.route("**/v1/models", lambda route: route.fulfill(status=401, body=json.dumps(body)))
    page.reload()
    sync_api.expect(page.locator("#notice")).to_contain_text("needs a valid API key")
    page.screenshot(path=str(SHOTS / "unauthorized.png"))
