"""The static report in a real browser: headless Chromium opens ``index.html`` from a
copy of the report folder over file://, the page and every image load, and nothing
is fetched from anywhere but the folder itself (the DevTools network log of the page).

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``make install``) and
``selenium`` (the ``test`` extra); skips without them (a failure in CI). Selenium is
given the driver's path, so Selenium Manager never looks for (or downloads) one.
"""
from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest
from typer.testing import CliRunner

webdriver = pytest.importorskip("selenium.webdriver",
                                reason="selenium not installed (pip install -e '.[test]')")

from test_report import small_run  # noqa: E402  (its own skips: plugins, sep)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
N_FRAMES = 4
PLOTS = {"target.png", "variables.png", "zero_points.png", "astrometry.png", "conditions.png"}
SECTIONS = ("Target light curve", "Most variable sources", "Zero point per frame",
            "Astrometric residual map", "FWHM, zero point, airmass and sky", "Frames",
            "Frame images")


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium driven through /usr/bin/chromedriver, its own profile."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).is_file():
            pytest.skip(f"{path} is absent (apt-get install {package}, or make install)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions",
                 "--no-first-run", "--window-size=1280,1024",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})   # DevTools events
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class _Links(HTMLParser):
    """Every URL the page refers to: src, href, srcset, poster, data (attributes)."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action") and value:
                self.urls.append(value)


@pytest.mark.timeout(120)
def test_report_opens_offline_in_chromium(tmp_path, browser):
    from bhcore.cli.main import app
    _night, out = small_run(tmp_path, n_frames=N_FRAMES, images=True)
    res = CliRunner().invoke(app, ["report", str(out), "--top", "3"])
    assert res.exit_code == 0, res.output
    # a report opens from wherever it is copied: only paths inside its folder
    copy = shutil.copytree(out / "report", tmp_path / "elsewhere" / "report")
    page = Path(copy) / "index.html"
    text = page.read_text()

    links = _Links()
    links.feed(text)
    assert links.urls
    for url in links.urls:
        parsed = urlparse(url)
        assert not parsed.scheme and not parsed.netloc and not url.startswith("/"), url
        if parsed.path:
            assert (page.parent / parsed.path).is_file(), url
    assert "url(" not in text and "@import" not in text and "<script" not in text

    browser.get_log("performance")          # drop what the browser's start page did
    browser.get(page.as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    assert browser.title == "bhcore report"
    headings = [h.text for h in browser.find_elements("css selector", "h1, h2")]
    assert headings[0] == "bhcore report"
    for section in SECTIONS:
        assert any(h.startswith(section) for h in headings), (section, headings)

    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete,"
        " i.naturalWidth, i.naturalHeight]);")
    broken = [img for img in images if not (img[1] and img[2] > 0 and img[3] > 0)]
    assert not broken, f"images that did not load: {broken}"
    sources = [img[0] for img in images]
    assert PLOTS <= set(sources)
    frame_images = [s for s in sources if s.startswith("frames/")]
    assert len(frame_images) == 2 * N_FRAMES              # a frame and a residual each
    assert len(images) >= len(PLOTS) + 2 * N_FRAMES

    # what the page actually fetched (Resource Timing skips file:, DevTools does not)
    requested, failed = {}, []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if (message["method"] == "Network.requestWillBeSent"
                and params.get("documentURL") == page.as_uri()):
            requested[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed":
            failed.append(params.get("requestId"))
    urls = set(requested.values())
    assert all(url.startswith("file:") for url in urls), sorted(urls)
    assert {page.as_uri()} | {(page.parent / s).as_uri() for s in sources} <= urls
    assert not [requested[r] for r in failed if r in requested]
