"""The live page at ``/`` in a real headless browser (Debian's Chromium driven by
Playwright): three turns typed in, the three predictions shown equal the service's own."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TURNS = [
    ("Ann", "I got the job, I can't believe it!"),
    ("Bob", "You never listen to me!"),
    ("Ann", "Okay, see you tomorrow."),
]


def require_browser() -> None:
    """Skip without Chromium, Playwright or the serve extra, except in CI (CI set), where
    they must be there (the test fails)."""
    if os.environ.get("CI"):
        return
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
    for module in ("playwright.sync_api", "uvicorn", "starlette"):
        pytest.importorskip(module)


require_browser()


@contextmanager
def serving(run_dir: Path) -> Iterator[str]:
    """The app with uvicorn in a thread on a free loopback port; its base URL."""
    import uvicorn

    from corect.serving.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(run_dir), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def post(url: str, body: dict) -> dict:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as r:
        return json.loads(r.read())


def shown(page) -> list[dict]:
    """The turns of the page's timeline as displayed: index, label, probabilities (the
    value shown, rounded, and the exact one in the row's data attribute), error."""
    return page.eval_on_selector_all(
        "#timeline .turn",
        """items => items.map(item => ({
            index: item.querySelector('.index').textContent,
            speaker: item.querySelector('.speaker').textContent,
            label: item.querySelector('.label').textContent,
            error: item.querySelector('.message')?.textContent ?? null,
            probabilities: Object.fromEntries(Array.from(item.querySelectorAll('.prob'),
                row => [row.dataset.label, [row.querySelector('.value').textContent,
                                            Number(row.dataset.probability)]])),
        }))""",
    )


def test_three_turns_in_the_page_equal_the_service(text_causal_run) -> None:
    from playwright.sync_api import sync_playwright

    with serving(text_causal_run["run"]) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(base + "/")
            page.wait_for_function("document.querySelector('#run').textContent.includes('run ')")
            labels = json.loads(urllib.request.urlopen(base + "/health", timeout=10).read())
            labels = labels["labels"]
            conversation = page.text_content("#conversation")
            for k, (speaker, text) in enumerate(TURNS):
                page.fill("#speaker", speaker)
                page.fill("#text", text)
                page.press("#text", "Enter")
                page.wait_for_selector(f"#timeline .turn[data-index='{k}']", timeout=30_000)
            turns = shown(page)
            # The same turns replayed over POST in a second conversation: the same answers.
            for k, ((speaker, text), turn) in enumerate(zip(TURNS, turns, strict=True)):
                reply = post(
                    f"{base}/v1/conversations/replay/utterances", {"speaker": speaker, "text": text}
                )
                assert reply["index"] == k and turn["index"] == f"#{k}"
                assert turn["speaker"] == speaker and turn["error"] is None
                assert turn["label"] == reply["label"]
                assert list(turn["probabilities"]) == labels
                for label, (text_shown, exact) in turn["probabilities"].items():
                    expected = reply["probabilities"][label]
                    assert abs(float(text_shown) - expected) <= 5e-5 + 1e-6  # 4 decimals shown
                    assert abs(exact - expected) < 1e-6  # the value behind the bar
            state = json.loads(
                urllib.request.urlopen(f"{base}/v1/conversations/{conversation}", timeout=10).read()
            )
            assert state["utterances"] == 3
            # A bad message is shown inline, naming the field; the conversation goes on.
            if not page.is_visible("#features"):  # a text-only run: the box starts folded
                page.click("#more summary")
            page.fill("#features", '{"text": [1, 2]}')
            page.fill("#text", "wrong features")
            page.press("#text", "Enter")
            page.wait_for_selector("#timeline .turn.error .message", timeout=30_000)
            assert "features.text" in page.text_content("#timeline .turn.error .message")
            page.fill("#features", "")
            page.fill("#text", "And now?")
            page.press("#text", "Enter")
            page.wait_for_selector("#timeline .turn[data-index='3']", timeout=30_000)
            # A new conversation: an empty timeline under a new id.
            page.click("#new")
            assert page.text_content("#conversation") != conversation
            assert page.locator("#timeline .turn").count() == 0
        finally:
            browser.close()
