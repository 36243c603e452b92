"""The console and approval links in a real browser: Playwright drives Debian's Chromium
against a real `agentflow serve` process.

Skipped (saying why) without the playwright package or /usr/bin/chromium, except under
CI (`CI=true`), where they must run. Screenshots are written to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from tests.support.web_server import ROOT, WebServer, require, web_server

require("fastapi", "uvicorn", "playwright")
CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser tests: no {CHROMIUM} (apt-get install chromium)",
                    pytrace=False)
    pytest.skip(f"no {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

# Without the background-networking flags Chromium calls out to the network at start-up,
# which this machine's closed network refuses.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
TENANT = WebServer.TENANT


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    with web_server(tmp_path_factory.mktemp("browser")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def tab(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(60_000)
    yield opened
    context.close()


def screenshot(tab: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    tab.screenshot(path=str(path), full_page=True)
    return path


def test_approve_with_an_edited_argument_from_the_console(server: WebServer, tab: Page) -> None:
    server.start("older-run", inputs={"account": "initech", "amount": 5})
    server.start("pay-acme", inputs={"account": "acme", "amount": 1200})
    tab.goto(f"{server.base}/#token={server.tokens['alice']}")
    row = tab.locator('tr[data-run="pay-acme"]')
    expect(row).to_contain_text("waiting")
    expect(row).to_contain_text("payment")
    tab.locator("#status").select_option("waiting")
    expect(tab.locator('tr[data-run="older-run"]')).to_be_visible()
    row.get_by_role("link", name="pay-acme").click()
    tab.wait_for_url("**/runs/pay-acme")
    card = tab.locator(".approval")
    expect(card).to_contain_text("Pay 1200 to acme?")
    shown = json.loads(card.locator(".exact-args").inner_text())
    assert shown == {"account": "acme", "amount": 1200}
    expect(tab.locator('#plan-graph g[data-step="pay"]')).to_have_attribute(
        "data-status", "waiting")
    screenshot(tab, "console-run-waiting.png")
    tab.evaluate("window.sameDocument = true")  # gone if the page were reloaded
    card.locator("summary").click()
    card.locator("textarea.args").fill(json.dumps({"account": "acme", "amount": 1000}))
    card.locator("input.comment").fill("cap at 1000")
    card.locator("button.edit-approve").click()
    expect(tab.locator("#run-status")).to_have_text("completed")
    expect(tab.locator('#plan-graph g[data-step="pay"]')).to_have_attribute(
        "data-status", "succeeded")
    expect(tab.locator('#steps tr[data-step="pay"]')).to_contain_text('"amount":1000')
    expect(tab.locator("#journal")).to_contain_text("decision")
    assert tab.evaluate("window.sameDocument") is True
    screenshot(tab, "console-run-completed.png")
    run = server.run("pay-acme")
    assert run["outputs"]["paid"] == {"account": "acme", "amount": 1000,
                                      "receipt": "tx-acme-1000"}


def link(server: WebServer, run_id: str, pending: str) -> str:
    return server.engine.approval_link(run_id, pending, approver="bob", expires_in=3600,
                                       tenant=TENANT, base_url=server.base)


def test_reject_from_a_signed_link(server: WebServer, tab: Page) -> None:
    pending = server.start("link-reject", inputs={"account": "globex", "amount": 99})
    tab.goto(link(server, "link-reject", pending))
    expect(tab.locator("h1")).to_have_text("Decide an approval")
    expect(tab.locator("body")).to_contain_text("Pay 99 to globex?")
    expect(tab.locator("body")).to_contain_text('"account": "globex"')
    tab.locator("#comment").fill("unknown payee")
    tab.locator("#reject").click()
    expect(tab.locator("#outcome")).to_contain_text("rejected")
    screenshot(tab, "link-rejected.png")
    run = server.finished("link-reject")
    assert {step["id"]: step["status"] for step in run["steps"]}["pay"] == "rejected"
    [decision] = [entry for entry in server.engine.store.read_journal(TENANT, "link-reject")
                  if entry.kind == "decision"]
    assert (decision.data["by"], decision.data["reason"]) == ("bob", "unknown payee")


def test_a_tampered_link_is_refused_in_the_browser(server: WebServer, tab: Page) -> None:
    pending = server.start("link-tampered", inputs={"account": "acme", "amount": 10})
    parts = urlsplit(link(server, "link-tampered", pending))
    query: dict[str, Any] = dict(parse_qsl(parts.query))
    query["approver"] = "alice"  # bob's link, claimed for alice
    before = server.snapshot("link-tampered")
    response = tab.goto(f"{server.base}{parts.path}?{urlencode(query)}")
    assert response is not None and response.status == 403
    expect(tab.locator("h1")).to_have_text("This link was tampered with")
    expect(tab.locator("#approve")).to_have_count(0)
    expect(tab.locator("#refused")).to_contain_text("signature does not match")
    screenshot(tab, "link-tampered.png")
    assert server.snapshot("link-tampered") == before


def test_a_failed_steps_error_and_traceback_on_the_run_page(server: WebServer,
                                                           tab: Page) -> None:
    from tests.support.web_tools import FAILING_PLAN

    failed = server.engine.tenant(TENANT).execute(FAILING_PLAN, inputs={"account": "x-9"},
                                                  run_id="bounced")
    assert failed.status == "failed"
    tab.goto(f"{server.base}/runs/bounced#token={server.tokens['viewer']}")
    expect(tab.locator("#run-status")).to_have_text("failed")
    row = tab.locator('#steps tr[data-step="check"]')
    expect(row).to_contain_text("ValueError: account 'x-9' is closed")
    row.locator("summary").click()
    expect(row.locator(".traceback pre")).to_contain_text('raise ValueError(f"account')
    expect(tab.locator('#plan-graph g[data-step="check"]')).to_have_attribute(
        "data-status", "failed")


def test_the_readme_picture_a_release_waiting_for_its_deploy(server: WebServer,
                                                            tab: Page) -> None:
    """The README's screenshot: the demo release plan after its flaky test matrix, waiting
    for approval of the deploy (AGENTFLOW_UPDATE_SCREENSHOT=1 copies it into docs/)."""
    from agentflow.demo import TOOLS as DEMO_TOOLS

    plan = json.loads((ROOT / "plans" / "release_with_approval.json").read_text())
    waiting = server.engine.tenant(TENANT).execute(plan, tools=DEMO_TOOLS,
                                                   inputs={"ref": "v2.4.0"}, run_id="release-42")
    [pending] = waiting.pending
    tab.goto(f"{server.base}/runs/release-42#token={server.tokens['alice']}")
    card = tab.locator(".approval")
    expect(card).to_contain_text(f"Deploy {waiting.steps['checkout'].output['sha']} to "
                                 "production?")
    assert json.loads(card.locator(".exact-args").inner_text()) == pending.args
    expect(tab.locator('#steps tr[data-step="test"]')).to_contain_text("5 (4 items)")
    for step, status in (("checkout", "succeeded"), ("test", "succeeded"),
                         ("build", "succeeded"), ("deploy", "waiting"), ("notify", "pending")):
        expect(tab.locator(f'#plan-graph g[data-step="{step}"]')).to_have_attribute(
            "data-status", status)
    expect(tab.locator("#journal")).to_contain_text("ConnectionError")
    made = screenshot(tab, "console-release-waiting.png")
    if os.environ.get("AGENTFLOW_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(made, ROOT / "docs" / "console-run.png")
