"""Signed approval links: decide one pending approval from a URL in an email or a chat.

A link carries the tenant, run, pending id, the plan hash and arguments hash the approval
is bound to, the approver and an expiry, and an HMAC-SHA256 over all of them (encoded as
one JSON array, so no two field lists sign the same text). The key is `AGENTFLOW_SECRET`,
or a random key generated once per tenant and kept in the store.

Checking a link refuses, changing nothing: a bad signature (`LinkTampered`), a passed
expiry (`LinkExpired`), an approval whose plan or arguments changed since the link was
made (`LinkArgsChanged`), and everything `Engine.approve` refuses (already decided,
expired, not an approver).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from agentflow.engine.results import Pending, pending_from_wait
from agentflow.errors import (
    AlreadyDecided,
    DecisionExpired,
    LinkArgsChanged,
    LinkExpired,
    LinkTampered,
    NotAnApprover,
    PendingNotFound,
    RunNotFound,
    StaleDecision,
)
from agentflow.store import Store, WaitRecord

if TYPE_CHECKING:
    from agentflow.engine.engine import Engine

SECRET_ENV_VAR = "AGENTFLOW_SECRET"
URL_ENV_VAR = "AGENTFLOW_URL"
DEFAULT_URL = "http://127.0.0.1:8080"
LINK_PATH = "/link/approval"
_FIELDS = ("tenant", "run", "pending", "plan", "args", "approver", "expires")


@dataclass(frozen=True)
class ApprovalLink:
    """The fields a link signs, as they travel in its query string."""

    tenant: str
    run: str
    pending: str
    plan: str
    args: str
    approver: str
    expires: int

    def message(self) -> bytes:
        return json.dumps([getattr(self, name) for name in _FIELDS]).encode()

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> tuple[ApprovalLink, str]:
        """The link's fields and signature; `LinkTampered` when any is missing or malformed."""
        missing = [name for name in (*_FIELDS, "sig") if not query.get(name)]
        if missing:
            raise LinkTampered(f"the link lacks {', '.join(missing)}")
        try:
            expires = int(query["expires"])
        except ValueError:
            raise LinkTampered("the link's expiry is not a whole number") from None
        fields = {name: query[name] for name in _FIELDS if name != "expires"}
        return cls(**fields, expires=expires), query["sig"]


def link_key(store: Store, tenant: str) -> bytes:
    """The HMAC key: `AGENTFLOW_SECRET`, else the tenant's own in the store (made on first
    use)."""
    configured = os.environ.get(SECRET_ENV_VAR)
    if configured:
        return configured.encode()
    return store.secret(tenant, "approval-links", lambda: secrets.token_hex(32)).encode()


def sign(store: Store, link: ApprovalLink) -> str:
    return hmac.new(link_key(store, link.tenant), link.message(), hashlib.sha256).hexdigest()


def make_link(engine: Engine, run_id: str, pending_id: str, *, approver: str,
              expires_in: float, tenant: str, base_url: str | None) -> str:
    """The URL of a link deciding `pending_id` as `approver` until `expires_in` seconds from
    now, on the console at `base_url` (else `AGENTFLOW_URL`, else http://127.0.0.1:8080).
    Refused (`PendingNotFound`, `AlreadyDecided`, `StaleDecision`, ...) for an approval that
    is not pending now. Whether `approver` may decide is checked when the link is used."""
    if not isinstance(approver, str) or not approver.strip():
        raise ValueError(f"approver must be a non-empty name, not {approver!r}")
    if not isinstance(expires_in, int | float) or expires_in <= 0:
        raise ValueError(f"expires_in must be a positive number of seconds, not {expires_in!r}")
    wait = _approval(engine.store, tenant, run_id, pending_id)
    _check_pending(wait)
    link = ApprovalLink(tenant, run_id, pending_id, wait.plan_hash, wait.args_hash or "",
                        approver, int(time.time() + expires_in))
    query = {name: getattr(link, name) for name in _FIELDS}
    base = (base_url or os.environ.get(URL_ENV_VAR) or DEFAULT_URL).rstrip("/")
    return f"{base}{LINK_PATH}?{urlencode({**query, 'sig': sign(engine.store, link)})}"


def check_link(store: Store, query: Mapping[str, str]) -> tuple[ApprovalLink, Pending]:
    """The link's fields and the approval it decides, if it may decide it now; else the
    reason it may not, as an error (see the module docstring)."""
    link, signature = ApprovalLink.from_query(query)
    if not hmac.compare_digest(sign(store, link), signature):
        raise LinkTampered("the link's signature does not match its contents: it was "
                           "altered, or made with another key")
    wait = _approval(store, link.tenant, link.run, link.pending)
    if (wait.plan_hash, wait.args_hash or "") != (link.plan, link.args) \
            or wait.status == "stale":
        raise LinkArgsChanged(f"the arguments of {link.pending!r} of run {link.run!r} changed "
                              "since the link was made; decide the run's new approval instead")
    _check_pending(wait)
    if link.expires < time.time():
        raise LinkExpired(f"the link expired at {_utc(link.expires)}")
    if wait.approvers and link.approver not in wait.approvers:
        raise NotAnApprover(link.run, link.pending,
                            f"{link.approver!r} may not decide {link.pending!r} of run "
                            f"{link.run!r}; approvers: {', '.join(wait.approvers)}")
    return link, pending_from_wait(wait)


def decide_by_link(engine: Engine, query: Mapping[str, str], *, approve: bool,
                   comment: str | None = None) -> Pending:
    """Approve or reject (with `comment` as the reason) the link's approval as its approver,
    after `check_link`; the engine's own checks then hold as for any decision."""
    link, _ = check_link(engine.store, query)
    if approve:
        return engine.approve(link.run, link.pending, by=link.approver, comment=comment,
                              tenant=link.tenant)
    return engine.reject(link.run, link.pending, by=link.approver, reason=comment,
                         tenant=link.tenant)


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _approval(store: Store, tenant: str, run_id: str, pending_id: str) -> WaitRecord:
    if store.get_run(tenant, run_id) is None:
        raise RunNotFound(run_id, tenant)
    for wait in store.list_waits(tenant, run_id):
        if wait.wait_id == pending_id and wait.kind == "approval":
            return wait
    raise PendingNotFound(run_id, pending_id)


def _check_pending(wait: WaitRecord) -> None:
    """Refuse an approval that can no longer be decided, as `Engine.approve` would."""
    if wait.status == "stale":
        raise StaleDecision(wait.run_id, wait.wait_id)
    if wait.status == "pending" and wait.expires_at is not None \
            and wait.expires_at < time.time():
        raise DecisionExpired(wait.run_id, wait.wait_id, wait.expires_at)
    if wait.status == "expired":
        raise DecisionExpired(wait.run_id, wait.wait_id, wait.expires_at)
    if wait.status != "pending":
        by = (wait.decision or {}).get("by")
        raise AlreadyDecided(wait.run_id, wait.wait_id, wait.status, by, wait.decided_at)
