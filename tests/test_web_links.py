"""Signed approval links over HTTP against a real server: the page shows what will be
decided, a POST decides it, and each way a link can be wrong is refused with a clear page
that changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from agentflow.errors import LinkTampered
from agentflow.store.base import WaitRecord
from tests.support.web_server import WebServer, page, require, web_server

require("fastapi", "uvicorn")
TENANT = WebServer.TENANT


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    with web_server(tmp_path_factory.mktemp("links")) as running:
        yield running


def link(server: WebServer, run_id: str, pending: str, approver: str = "alice",
         expires_in: float = 3600) -> str:
    return server.engine.approval_link(run_id, pending, approver=approver,
                                       expires_in=expires_in, tenant=TENANT,
                                       base_url=server.base)


def with_field(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {**dict(parse_qsl(parts.query)), **changes}
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}"


def refused(server: WebServer, url: str, run_id: str, status: int, reason: str) -> str:
    """GET and POST both refuse with `status` and `reason`, and the store is unchanged."""
    before = server.snapshot(run_id)
    code, html = page(server.base, url)
    assert (code, f'data-reason="{reason}"' in html) == (status, True), html
    assert 'id="approve"' not in html
    code, posted = page(server.base, url, {"decision": "approve", "comment": "sneaky"})
    assert (code, f'data-reason="{reason}"' in posted) == (status, True), posted
    assert server.snapshot(run_id) == before
    return html


def test_a_link_shows_the_exact_call_and_approves_it(server: WebServer) -> None:
    pending = server.start("ok-1", inputs={"account": "acme", "amount": 75})
    url = link(server, "ok-1", pending)
    assert url.startswith(f"{server.base}/link/approval?")
    code, html = page(server.base, url)
    assert code == 200
    assert "Pay 75 to acme?" in html and "<b>alice</b>" in html
    assert "&quot;amount&quot;: 75" in html and "&quot;account&quot;: &quot;acme&quot;" in html
    code, html = page(server.base, url, {"decision": "approve", "comment": "fine"})
    assert (code, 'id="outcome"' in html, "approved" in html) == (200, True, True)
    run = server.finished("ok-1")
    assert run["outputs"]["paid"]["amount"] == 75
    [decision] = [e for e in server.engine.store.read_journal(TENANT, "ok-1")
                  if e.kind == "decision"]
    assert (decision.data["by"], decision.data["comment"]) == ("alice", "fine")
    refused(server, url, "ok-1", 409, "AlreadyDecided")  # the same link, once more


def test_a_tampered_link_is_refused(server: WebServer) -> None:
    pending = server.start("tamper-1")
    url = link(server, "tamper-1", pending, approver="mallory")
    html = refused(server, with_field(url, approver="alice"), "tamper-1", 403, "tampered")
    assert "This link was tampered with" in html
    signature = dict(parse_qsl(urlsplit(url).query))["sig"]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    refused(server, with_field(url, sig=flipped), "tamper-1", 403, "tampered")
    refused(server, with_field(url, expires=str(int(time.time()) + 10**6)), "tamper-1", 403,
            "tampered")
    refused(server, with_field(url, sig=""), "tamper-1", 403, "tampered")


def test_a_link_for_arguments_that_changed_is_refused(server: WebServer) -> None:
    server.start("changed-1")
    store = server.engine.store
    run = store.get_run(TENANT, "changed-1")
    assert run is not None
    # An approval the step asked for earlier with other arguments: the link is made for it,
    # then the executor asks anew with the current arguments and marks it stale.
    old = WaitRecord(tenant_id=TENANT, run_id="changed-1", wait_id="pay@approval:deadbeef",
                     key="pay@approval", kind="approval", plan_hash=run.plan_hash,
                     step_id="pay", tool="transfer", args={"account": "acme", "amount": 5},
                     args_hash="deadbeef" * 8, approvers=["alice"])
    store.acquire_lease(TENANT, "changed-1", "test", 30, time.time())
    store.put_waits(TENANT, "changed-1", "test", [old])
    store.finish_run(TENANT, "changed-1", "test", "waiting")
    url = link(server, "changed-1", old.wait_id)
    assert page(server.base, url)[0] == 200
    assert server.engine.tenant(TENANT).resume("changed-1").status == "waiting"
    html = refused(server, url, "changed-1", 409, "changed")
    assert "The arguments changed since this link was made" in html


def test_an_expired_link_is_refused(server: WebServer) -> None:
    pending = server.start("late-1")
    url = link(server, "late-1", pending, expires_in=0.5)
    time.sleep(1.1)  # expiry is signed in whole seconds
    html = refused(server, url, "late-1", 410, "expired")
    assert "This link has expired" in html


def test_a_link_for_someone_not_among_the_approvers_is_refused(server: WebServer) -> None:
    pending = server.start("who-1")
    url = link(server, "who-1", pending, approver="mallory")
    html = refused(server, url, "who-1", 403, "NotAnApprover")
    assert "approvers: alice, bob" in html


def test_links_cannot_be_made_for_what_cannot_be_decided(server: WebServer) -> None:
    pending = server.start("made-1")
    with pytest.raises(ValueError, match="approver"):
        link(server, "made-1", pending, approver="")
    with pytest.raises(ValueError, match="expires_in"):
        link(server, "made-1", pending, expires_in=0)
    server.engine.tenant(TENANT).approve("made-1", pending, by="bob")
    with pytest.raises(Exception, match="already approved by bob"):
        link(server, "made-1", pending)


def test_a_link_signed_with_another_key_is_refused(server: WebServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pending = server.start("key-1")
    monkeypatch.setenv("AGENTFLOW_SECRET", "not the server's key")
    url = link(server, "key-1", pending)
    monkeypatch.delenv("AGENTFLOW_SECRET")
    refused(server, url, "key-1", 403, "tampered")
    from agentflow.engine.links import check_link

    with pytest.raises(LinkTampered):
        check_link(server.engine.store, dict(parse_qsl(urlsplit(url).query)))
