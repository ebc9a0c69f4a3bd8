"""The listening report in a real browser (Debian's Chromium through Playwright), opened from file://:
every audio element loads with the WAV's duration, every image decodes, and nothing leaves the machine.
The same for the self-contained copy, written where its relative links could not resolve.

Skipped without Chromium or Playwright, except on CI (``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import soundfile as sf
from test_report import CQT, SR, make_data

from timbrelab.evaluation.report import inline_report, write_report

CHROMIUM = Path("/usr/bin/chromium")
# Known to work headless as root here; the rest keeps Chromium from phoning home. --disable-dev-shm-usage:
# containers often have a 64 MB /dev/shm, and Debian's launcher check that would add it (/etc/chromium.d/
# dev-shm) breaks when findmnt prints more than one line.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
TIMEOUT_MS = 20_000


def require_browser() -> None:
    """Skip when the browser or Playwright is missing; on CI fail instead, saying how to install."""
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"Chromium at {CHROMIUM} (Debian: `apt-get install chromium`; .ci/run installs it)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (`pip install -c constraints.txt -e '.[test]'`, as `make test` does)")
    if not missing:
        return
    message = "browser test needs " + " and ".join(missing) + " (not `playwright install`: the test drives the system Chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def browser_context(tmp_path: Path):
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


def open_and_check(context, html_path: Path, durations: list[float]) -> None:
    """Load the page and assert what a listener needs: audio with the right length, decoded images, no
    request outside file:// and data:, no failed request."""
    page = context.new_page()
    urls: list[str] = []
    failed: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.on("requestfailed", lambda request: failed.append(f"{request.url}: {request.failure}"))
    page.goto(html_path.resolve().as_uri())
    page.wait_for_function(
        "() => [...document.querySelectorAll('audio')].every(a => a.readyState >= 1 || a.error)"
        " && [...document.images].every(i => i.complete)", timeout=TIMEOUT_MS)
    audio = page.eval_on_selector_all("audio", "els => els.map(a => [a.duration, a.error && a.error.code])")
    images = page.eval_on_selector_all("img", "els => els.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    page.close()
    assert [error for _, error in audio] == [None] * len(durations), audio
    assert [duration for duration, _ in audio] == pytest.approx(durations, abs=0.05)
    assert len(images) == len(durations) and all(ok and w > 0 and h > 0 for ok, w, h in images), images
    assert not failed, failed
    assert urls and all(url.startswith(("file://", "data:")) for url in urls), urls


def test_report_plays_offline_in_chromium(tmp_path: Path, browser_context):
    data = make_data(tmp_path)
    html_path = write_report(tmp_path / "report", data, sample_rate=SR, cqt=CQT)
    durations = [sf.info(str(html_path.parent / item["audio"])).duration
                 for clip in data["clips"] for item in clip["items"]]
    assert sorted(durations) == pytest.approx([0.5, 0.75, 1.25])  # the WAVs are what the test thinks
    open_and_check(browser_context, html_path, durations)

    inlined = tmp_path / "elsewhere" / "deeper" / "report.html"  # relative links would not resolve here
    inlined.parent.mkdir(parents=True)
    inlined.write_text(inline_report(html_path), encoding="utf-8")
    open_and_check(browser_context, inlined, durations)
