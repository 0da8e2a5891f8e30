"""The web page at `/`, driven in headless Chromium against the real server process.

Needs Debian's Chromium and Playwright's Python package (`make test-browser` installs both);
skipped with the reason when either is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.process import ServerHandle
from tests.clients.conftest import API_KEY

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (make test-browser)"
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed (make test-browser)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server: ServerHandle):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live_server.url}/")
    yield page
    page.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def visible_text(page) -> str:
    return page.eval_on_selector_all(
        "#output .token:not(.deleted)", "spans => spans.map(s => s.textContent).join('')"
    )


def test_generate_shows_a_deletion_and_ends_on_the_servers_text(page, live_server, tmp_path: Path):
    page.fill("#prompt", "1+1=")
    page.fill("#api_key", API_KEY)
    page.fill("#max_new_tokens", "16")
    page.click("#generate")

    page.wait_for_selector("#output .token.deleted", timeout=15_000)  # a deletion, on screen
    page.screenshot(path=str(tmp_path / "deleting.png"))
    page.wait_for_selector("#output[data-generated-text]", timeout=15_000)
    streamed_final = page.get_attribute("#output", "data-generated-text")

    answer = httpx.post(
        f"{live_server.url}/generate",
        json={"inputs": "1+1=", "parameters": {"max_new_tokens": 16}},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=30,
    ).json()
    assert visible_text(page) == streamed_final == answer["generated_text"] == "2 ok"
    assert page.inner_text("#backtracks") == "2"
    assert page.inner_text("#tokens") == "4"
    assert page.inner_text("#finish") == "eos"
    deleted = page.eval_on_selector_all("#removed span", "spans => spans.map(s => s.textContent)")
    assert deleted == ["3", "x"]

    page.wait_for_selector("#output .token.deleted", state="detached", timeout=5_000)
    assert page.inner_text("#output") == "1+1=2 ok"  # struck tokens are erased, not left behind
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)


def test_a_refused_request_shows_the_servers_message(page):
    page.fill("#prompt", "1+1=")
    page.fill("#max_new_tokens", "100000")  # above the server's limit
    page.fill("#api_key", API_KEY)
    page.click("#generate")
    page.wait_for_selector("#status.error", timeout=15_000)
    assert "422" in page.inner_text("#status")
    assert "max_new_tokens" in page.inner_text("#status")
    assert page.is_enabled("#generate")


def test_a_missing_api_key_is_reported(page):
    page.fill("#prompt", "1+1=")
    page.click("#generate")
    page.wait_for_selector("#status.error", timeout=15_000)
    assert "401" in page.inner_text("#status")


def test_the_pages_sse_reader_handles_any_chunking(page):
    """The page's own parser, fed CRLF frames split mid-line, mid-CRLF and mid-character."""
    chunks = [
        "event: tok",
        "en\r",
        '\ndata: {"text": "\u00e9"}\r\n',
        "\r\n: ping\n\n",
        "event: done\ndata: a\ndata: b\r\r",
    ]
    messages = page.evaluate(
        """async (chunks) => {
            const bytes = new TextEncoder().encode(chunks.join("\u0000"));
            const pieces = [];
            let start = 0;
            for (let i = 0; i <= bytes.length; i++) {
                if (i === bytes.length || bytes[i] === 0) { pieces.push(bytes.slice(start, i)); start = i + 1; }
            }
            pieces.splice(2, 1, pieces[2].slice(0, 14), pieces[2].slice(14));  // inside the é
            const body = new ReadableStream({ start(c) { pieces.forEach((p) => c.enqueue(p)); c.close(); } });
            const out = [];
            for await (const message of readEvents(body)) out.push(message);
            return out;
        }""",
        chunks,
    )
    assert messages == [
        {"event": "token", "data": '{"text": "\u00e9"}'},
        {"event": "done", "data": "a\nb"},
    ]
