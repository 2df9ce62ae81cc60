"""The dashboard in a real browser: headless Chromium logs in, opens every page and retries a failed run.

On every page each chart must have drawn its data points, and every time must show its exact UTC
time on hover.

Chromium and ChromeDriver are Debian's (`chromium`, `chromium-driver`), which `make test` installs.
"""
from __future__ import annotations

import os
import re

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.support.processes import wait_until
from tests.support.stack import WATCH_RULE, failed_form_run, write_form_rule, write_rule

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the networking flags Chromium keeps calling Google's hosts, which this closed network refuses.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1000"]
ADMIN = "browser-admin-token"


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with a new empty profile, driven through ChromeDriver."""
    for program in (CHROMIUM, CHROMEDRIVER):
        assert os.access(program, os.X_OK), f"{program} is missing: `make test` installs chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def heading(browser) -> str:
    return browser.find_element(By.TAG_NAME, "h1").text


def charts_drawn(browser) -> int:
    """How many charts the page has, once each has drawn data points a person can see and hover over."""
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    for chart in charts:
        points = chart.find_elements(By.CSS_SELECTOR, ".point")
        label = chart.get_attribute("aria-label")
        assert points, f"the chart of {label} on {browser.current_url} drew no data points"
        size = points[0].rect
        assert size["width"] > 0 and size["height"] > 0, f"the first point of {label} is not visible: {size}"
        assert points[0].find_element(By.TAG_NAME, "title").get_attribute("textContent"), f"{label}: no hover text"
    return len(charts)


def times_have_their_exact_time(browser) -> None:
    """Every relative time ("3 min ago") carries the exact UTC time shown on hover."""
    for element in browser.find_elements(By.TAG_NAME, "time"):
        shown = element.get_attribute("textContent")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", element.get_attribute("title")), shown
        assert shown == "just now" or shown.endswith(" ago") or shown.startswith("in "), shown


def checked(browser) -> int:
    """Check the page's times and charts; returns how many charts it has."""
    times_have_their_exact_time(browser)
    return charts_drawn(browser)


def visit(browser, link: str, title: str) -> int:
    """Follow a link to the page headed `title`, check its times and charts; returns how many charts it has."""
    browser.find_element(By.LINK_TEXT, link).click()
    wait_until(lambda: heading(browser) == title, 10, f"the {title} page")
    return checked(browser)


def overview_complete(browser) -> bool:
    """The overview, reloaded, once every chart has points (the worker samples the gauges every second here)."""
    browser.refresh()
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    return len(charts) == 4 and all(c.get_attribute("data-points") != "0" for c in charts)


def test_an_admin_logs_in_sees_every_page_and_retries_a_failed_run(browser, stack, sandbox, redis_url,
                                                                    rules_dir, tmp_path):
    write_form_rule(rules_dir)
    write_rule(rules_dir, "watch", WATCH_RULE)
    stack.env.update(ADMIN_TOKEN=ADMIN, SERIES_SAMPLE_SECONDS="1")
    stack.poller()
    web, failed = failed_form_run(stack, sandbox, redis_url, "msg_browser_1")

    browser.get(f"{web}/ui/rules")
    assert heading(browser) == "Log in"
    browser.find_element(By.NAME, "token").send_keys(ADMIN)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_until(lambda: heading(browser) == "Rules", 10, "the rules page after logging in")
    assert "form-to-task" in browser.find_element(By.ID, "rules").text
    assert checked(browser) == 0

    browser.find_element(By.LINK_TEXT, "Overview").click()
    wait_until(lambda: overview_complete(browser), 30, "every chart of the overview to have points", interval=1)
    assert checked(browser) == 4  # runs, InLoox requests, queue depth, poll lag
    failures = browser.find_element(By.ID, "failures")
    assert "form-to-task" in failures.text and "400" in failures.text, failures.text
    assert failures.find_element(By.LINK_TEXT, failed["id"]).is_displayed()
    shot(browser, tmp_path, "overview")
    assert visit(browser, "Poller", "Poller") == 1  # the lag of the watched set
    assert visit(browser, "Subscriptions", "Subscriptions") == 0
    browser.find_element(By.LINK_TEXT, "Queues").click()
    wait_until(lambda: "default" in browser.find_element(By.ID, "queues").text, 15,
               "rq-dashboard's script to list the default queue")
    assert browser.title == "RQ dashboard"

    browser.get(f"{web}/ui/runs")
    browser.find_element(By.LINK_TEXT, failed["id"]).click()
    wait_until(lambda: heading(browser) == f"Run {failed['id']}", 10, "the failed run's page")
    assert checked(browser) == 0
    assert browser.find_element(By.ID, "status").text == "failed"
    assert "400" in browser.find_element(By.ID, "steps").text
    for box in browser.find_elements(By.CSS_SELECTOR, "#steps pre"):  # a request or response shown whole
        assert box.get_property("scrollWidth") <= box.get_property("clientWidth") + 1, box.text[:200]
    shot(browser, tmp_path, "run")

    browser.find_element(By.ID, "retry-failed-step").click()
    wait_until(lambda: browser.find_element(By.ID, "notice").text == "Queued again.", 10, "the retry notice")
    wait_until(lambda: browser.refresh() or browser.find_element(By.ID, "status").text == "succeeded", 20,
               "the page to show the retried run succeeded", interval=0.5)
    assert sandbox.count("Task") == 1

    assert visit(browser, "Events", "Events") == 0
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-event="webhook:forms:msg_browser_1"]')
    assert row.find_element(By.CLASS_NAME, "name").text == "Call Ann"  # the form's title, beside its id
    shot(browser, tmp_path, "events")
    assert visit(browser, "webhook:forms:msg_browser_1", "Event webhook:forms:msg_browser_1") == 0
    assert failed["id"] in browser.find_element(By.ID, "path").text
    browser.find_element(By.ID, "replay-button").click()
    wait_until(lambda: "1 already ran" in browser.find_element(By.ID, "notice").text, 10, "the replay notice")
    assert visit(browser, "What-if", "What-if") == 0
    assert visit(browser, "Runs", "Runs") == 0
    assert sandbox.count("Task") == 1
    visit(browser, "Overview", "Overview")


def shot(browser, folder, name: str) -> None:
    """A screenshot of the whole page, to look at when the test fails (its path is printed)."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, max(1000, height))
    path = folder / f"{name}.png"
    browser.save_screenshot(str(path))
    browser.set_window_size(1280, 1000)
    print(f"screenshot of the {name} page: {path}")
