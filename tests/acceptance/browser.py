"""The browser tests' harness: a headless Chromium driven by selenium.

:func:`chromium` starts Debian's ``chromium`` through its ``chromedriver`` (found as
``$PGVISOR_CHROMIUM`` / ``$PGVISOR_CHROMEDRIVER``, else on PATH; ``.ci/ensure-chromium``
installs both). When they are missing the tests *fail* with how to get them: CI runs these
tests, it never skips them. The flags keep Chromium off the network (no background
requests, updates, sync or QUIC) with a fresh profile of its own.

The page rebuilds its tables' rows at every refresh (every 2 s): an element found before a
refresh is stale after it. So the helpers below find what they read or click again each
time (:meth:`Chromium.fresh`), and :meth:`Chromium.wait` polls again on a stale element;
a test keeps no element of a row across two calls (on a loaded machine the calls are slow
enough for a refresh to come between them).
"""
import os
import shutil
import tempfile
import time

import gevent
import pytest

#: Seconds a page may take to show what a test waits for.
PAGE_TIMEOUT = 30
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,900")


def binaries():
    """``(chromium, chromedriver)`` paths; fails the test when one is missing."""
    browser = os.environ.get("PGVISOR_CHROMIUM") or shutil.which("chromium")
    driver = os.environ.get("PGVISOR_CHROMEDRIVER") or shutil.which("chromedriver")
    if not (browser and os.access(browser, os.X_OK) and driver and os.access(driver, os.X_OK)):
        pytest.fail("Chromium and chromedriver are needed by the status page tests (found "
                    "chromium=%r, chromedriver=%r): run `bash .ci/ensure-chromium` as root "
                    "(apt-get install chromium chromium-driver) or set PGVISOR_CHROMIUM and "
                    "PGVISOR_CHROMEDRIVER" % (browser, driver), pytrace=False)
    return browser, driver


class Chromium:
    """One headless Chromium with a profile of its own; ``driver`` is the selenium
    WebDriver. ``close()`` ends the browser and removes the profile."""

    def __init__(self, window_size=None):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        browser, driver = binaries()
        self.profile = tempfile.mkdtemp(prefix="pgvisor-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in FLAGS:
            options.add_argument(flag)
        if window_size:
            options.add_argument("--window-size=%d,%d" % window_size)
        options.add_argument("--user-data-dir=" + self.profile)
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=driver))
        self.driver.set_page_load_timeout(PAGE_TIMEOUT)

    def wait(self, condition, message, timeout=PAGE_TIMEOUT):
        """Poll ``condition(driver)`` until it is truthy (its value) or fail with
        ``message`` after ``timeout`` seconds; a condition that meets a stale element is
        polled again (it must find its elements itself, each call)."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(
                                 condition, message)

    def fresh(self, read, timeout=PAGE_TIMEOUT):
        """``read()``, again while it meets an element a refresh replaced since ``read``
        found it (``read`` finds its elements itself); its value."""
        from selenium.common.exceptions import StaleElementReferenceException
        deadline = time.monotonic() + timeout
        while True:
            try:
                return read()
            except StaleElementReferenceException:
                if time.monotonic() > deadline:
                    raise

    def find(self, css):
        return self.driver.find_element("css selector", css)

    # -- the status page ---------------------------------------------------------------------
    def cell(self, name, column):
        """The text of ``column`` (a class of the instances table's cells) for instance
        ``name``; None while there is no such row."""
        def read():
            found = self.driver.find_elements(
                "css selector", 'tr[data-instance="%s"] td.%s' % (name, column))
            return found[0].text if found else None
        return self.fresh(read)

    def row_text(self, name):
        """All the text of instance ``name``'s row, hidden parts included."""
        return self.fresh(lambda: self.find('tr[data-instance="%s"]' % name).get_attribute(
            "textContent"))

    def expand(self, name, column):
        """Open the collapsed full text of ``column`` in instance ``name``'s row."""
        self.fresh(lambda: self.find('tr[data-instance="%s"] td.%s summary' % (
            name, column)).click())

    def expanded(self, name, column):
        """The full text of ``column`` in ``name``'s row when it is shown, else None."""
        def read():
            full = self.find('tr[data-instance="%s"] td.%s pre' % (name, column))
            return full.text if full.is_displayed() else None
        return self.fresh(read)

    def wait_cell(self, name, column, text):
        return self.wait(lambda d: self.cell(name, column) == text,
                         "%s of %s shows %r" % (column, name, text))

    def refreshes(self):
        """Answers of GET /status the page has rendered so far."""
        return int(self.driver.execute_script("return document.body.dataset.refreshes || 0"))

    def wait_refreshes(self, more):
        """Wait until the page has rendered ``more`` further answers of GET /status."""
        target = self.refreshes() + more
        self.wait(lambda d: self.refreshes() >= target, "%d more refreshes" % more)

    def outcomes(self):
        """The action outcomes shown, newest first."""
        return self.fresh(lambda: [
            item.text for item in self.driver.find_elements("css selector", "#outcomes li")])

    def action_buttons(self):
        """``(instance, action)`` of each action button shown."""
        return self.fresh(lambda: [
            (button.get_attribute("data-instance"), button.get_attribute("data-action"))
            for button in self.driver.find_elements("css selector", "#instances button.action")])

    def enter_token(self, token):
        self.driver.find_element("id", "token").send_keys(token)
        self.driver.find_element("id", "token-use").click()

    def click(self, name, action):
        self.fresh(lambda: self.find('button[data-instance="%s"][data-action="%s"]' % (
            name, action)).click())

    def close(self):
        try:
            self.driver.quit()
        finally:
            # In gevent's threadpool: on the hub, each directory's descriptor that rmtree
            # closes is closed later by a hub callback (gevent defers closing what is not a
            # regular file), and the last close of a removed directory waits for the disk.
            # Those callbacks ran in the next test's heartbeat: the hub in close(2) on
            # submit_bio_wait for 33 ms under load (test_batching, the first integration
            # test after this module).
            gevent.get_hub().threadpool.apply(
                shutil.rmtree, (self.profile,), {"ignore_errors": True})
