"""The dashboard in a real browser: headless Chromium logs in, opens every page and retries a failed run.

Chromium and ChromeDriver are Debian's (`chromium`, `chromium-driver`), which `make test` installs.
"""
from __future__ import annotations

import os

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.support.processes import wait_until
from tests.support.stack import failed_form_run, write_form_rule

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


def test_an_admin_logs_in_sees_every_page_and_retries_a_failed_run(browser, stack, sandbox, redis_url,
                                                                    rules_dir, tmp_path):
    write_form_rule(rules_dir)
    stack.env["ADMIN_TOKEN"] = ADMIN
    web, failed = failed_form_run(stack, sandbox, redis_url, "msg_browser_1")

    browser.get(f"{web}/ui/rules")
    assert heading(browser) == "Log in"
    browser.find_element(By.NAME, "token").send_keys(ADMIN)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_until(lambda: heading(browser) == "Rules", 10, "the rules page after logging in")
    assert "form-to-task" in browser.find_element(By.TAG_NAME, "table").text

    browser.find_element(By.LINK_TEXT, "Poller").click()
    wait_until(lambda: heading(browser) == "Poller", 10, "the poller page")
    browser.find_element(By.LINK_TEXT, "Queues").click()
    wait_until(lambda: "default" in browser.find_element(By.ID, "queues").text, 15,
               "rq-dashboard's script to list the default queue")
    assert browser.title == "RQ dashboard"

    browser.get(f"{web}/ui/runs")
    browser.find_element(By.LINK_TEXT, failed["id"]).click()
    wait_until(lambda: heading(browser) == f"Run {failed['id']}", 10, "the failed run's page")
    assert browser.find_element(By.ID, "status").text == "failed"
    assert "500" in browser.find_element(By.ID, "steps").text

    browser.find_element(By.ID, "retry-failed-step").click()
    wait_until(lambda: browser.find_element(By.ID, "notice").text == "Queued again.", 10, "the retry notice")
    wait_until(lambda: browser.refresh() or browser.find_element(By.ID, "status").text == "succeeded", 20,
               "the page to show the retried run succeeded", interval=0.5)
    assert sandbox.count("Task") == 1

    browser.find_element(By.LINK_TEXT, "Events").click()
    wait_until(lambda: heading(browser) == "Events", 10, "the events page")
    browser.find_element(By.LINK_TEXT, "webhook:forms:msg_browser_1").click()
    wait_until(lambda: heading(browser) == "Event webhook:forms:msg_browser_1", 10, "the event's page")
    assert failed["id"] in browser.find_element(By.ID, "path").text
    browser.find_element(By.ID, "replay-button").click()
    wait_until(lambda: "1 already ran" in browser.find_element(By.ID, "notice").text, 10, "the replay notice")
    browser.find_element(By.LINK_TEXT, "What-if").click()
    wait_until(lambda: heading(browser) == "What-if", 10, "the what-if page")
    assert sandbox.count("Task") == 1
    screenshot = tmp_path / "run-page.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot of the run page: {screenshot}")
