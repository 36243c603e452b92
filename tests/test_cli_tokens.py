"""`agentflow tokens create|list|revoke`: tokens shown once, kept as hashes, refused once
revoked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agentflow.engine.tokens import authenticate, token_hash
from agentflow.errors import AccessDenied
from agentflow.store import open_store
from tests.support.cli import cli
from tests.support.web_server import ROOT, free_port


def test_create_list_and_revoke_tokens(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    made = cli("tokens", "create", "--tenant", "acme", "--role", "approver", "--name", "alice",
               "--store", store, "--json")
    assert made.exit_code == 0, made.output
    token = json.loads(made.stdout)
    assert (token["tenant"], token["role"], token["name"]) == ("acme", "approver", "alice")
    plain = cli("tokens", "create", "--tenant", "globex", "--store", store)
    assert plain.exit_code == 0 and plain.stdout.startswith("af_")
    listed = json.loads(cli("tokens", "list", "--store", store, "--json").stdout)
    assert [(t["tenant"], t["role"], t["name"], t["revoked_at"]) for t in listed] == [
        ("acme", "approver", "alice", None), ("globex", "viewer", "viewer@globex", None)]
    assert token["token"] not in cli("tokens", "list", "--store", store).stdout
    with open_store(store) as opened:
        assert authenticate(opened, token["token"]).name == "alice"
        assert all(row.token_hash == token_hash(token["token"])
                   for row in opened.list_tokens("acme"))
    revoked = cli("tokens", "revoke", token["id"], "--store", store)
    assert (revoked.exit_code, revoked.stdout.strip()) == (0, f"revoked {token['id']}")
    with open_store(store) as opened:
        try:
            authenticate(opened, token["token"])
        except AccessDenied as error:
            assert error.status == 401 and "revoked" in str(error)
        else:
            raise AssertionError("a revoked token was accepted")
    again = cli("tokens", "revoke", token["id"], "--store", store)
    assert again.exit_code == 1 and "no live token" in again.output


def test_bad_token_options_are_refused(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    wrong = cli("tokens", "create", "--tenant", "acme", "--role", "owner", "--store", store)
    assert wrong.exit_code == 1 and "role must be one of viewer, approver, admin" in wrong.output
    blank = cli("tokens", "create", "--tenant", " ", "--store", store)
    assert blank.exit_code == 1 and "tenant" in blank.output
    with open_store(store) as opened:
        assert opened.list_tokens() == []


def test_serve_says_where_the_console_is(tmp_path: Path) -> None:
    """A user who starts the server is told the URL to open (it used to print nothing)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "agentflow.cli", "serve", "--store", str(tmp_path / "runs.db"),
         "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
    finally:
        server.kill()
        server.wait(timeout=30)
    base = f"http://127.0.0.1:{port}"
    assert first.startswith(f"serving the console at {base}/ (open {base}/#token=TOKEN "), first
    assert f"the API at {base}/api" in first and "resume" not in first  # no --tools given
