"""Fixtures of the operator page tests: a headless system Chromium (Debian chromium + chromium-driver).

No browser is downloaded: Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver, which
``make test`` installs (Makefile ``chromium`` target). Where they are missing the tests skip and say so.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def _browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One headless Chromium per module: its start is most of a browser test's time on a loaded box."""
    tmp_path = tmp_path_factory.mktemp("chromium")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (dev extra) is not installed")
    binary, driver = _find("chromium", "chromium-browser"), _find("chromedriver")
    if binary is None or driver is None:
        pytest.skip("system Chromium missing: `apt-get install chromium chromium-driver` (make chromium)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):  # fmt: skip
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=driver)
    browser = webdriver.Chrome(options=options, service=service)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def chromium(_browser: object) -> object:
    """The module's browser with no cookies: every test starts logged out."""
    _browser.delete_all_cookies()  # type: ignore[attr-defined]
    return _browser


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """Where screenshots go: $LINEWATCH_TEST_ARTIFACTS/<test> when set (CI collects it; `artifacts/`
    in the repo is git-ignored), else tmp_path/artifacts (pytest keeps the last runs' tmp folders)."""
    base = os.environ.get("LINEWATCH_TEST_ARTIFACTS")
    out = Path(base) / request.node.name if base else tmp_path / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    return out
