"""Headless Chromium for UI tests: Debian's `chromium` driven by Selenium through Debian's
`chromedriver` (both given by path, so Selenium never downloads a browser or a driver).

Screenshots go to CPT_TEST_ARTIFACTS (default: test-artifacts/ in the repository), one PNG per
check, so a failed run leaves a picture of what the browser saw."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-headless-shell")
# The machine has no outside network: without these Chromium keeps trying Google's services.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1500,950"]


def artifacts() -> Path:
    out = Path(os.environ.get("CPT_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next((b for b in CHROMIUM if Path(b).exists()), None)
    driver_bin = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    assert binary and Path(driver_bin).exists(), (
        "headless Chromium is needed for the browser tests: apt-get install chromium chromium-driver "
        "(`make test` installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(driver_bin))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def body_text(driver) -> str:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException:  # the page is being replaced
        return ""


def wait_for(driver, texts: list[str], name: str, timeout: float = 60) -> str:
    """Wait until the page shows every one of `texts`; screenshot it as `name` either way."""
    deadline = time.monotonic() + timeout
    while True:
        text = body_text(driver)
        missing = [t for t in texts if t not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    driver.save_screenshot(str(artifacts() / f"{name}.png"))
    assert not missing, f"{name}: the page never showed {missing}; it showed:\n{text[:3000]}"
    return text
