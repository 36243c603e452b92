"""API tokens: each bound to one tenant and one role, kept in the store as a hash only.

A token reads `af_<id>_<secret>`. The id is public (listed, used to revoke); the whole
token is shown once, when it is made. The store keeps the SHA-256 of the token: the secret
part is 32 random bytes, so a fast hash is as safe as a slow one and costs one look-up.

Roles nest: a `viewer` reads runs, journals and plans; an `approver` also approves, rejects
and sends events; an `admin` also submits and cancels runs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Literal, get_args

from agentflow.errors import AccessDenied
from agentflow.store import Store, TokenRecord

Role = Literal["viewer", "approver", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
_TOKEN = re.compile(r"af_([0-9a-f]{12})_[0-9A-Za-z_-]{43}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(store: Store, *, tenant: str, role: str, name: str) -> tuple[str, TokenRecord]:
    """A new token for `tenant` with `role`; `name` is who or what holds it (an approver's
    name: decisions made with the token are made by it). Returns the token, shown only now,
    and its stored record."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    for what, value in (("tenant", tenant), ("name", name)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"a token's {what} must be a non-empty string, not {value!r}")
    token_id = secrets.token_hex(6)
    token = f"af_{token_id}_{secrets.token_urlsafe(32)}"
    record = TokenRecord(token_hash(token), token_id, tenant, role, name, time.time())
    store.put_token(record)
    return token, record


def authenticate(store: Store, token: str | None) -> TokenRecord:
    """The live token record of `token`; `AccessDenied` (401) when it is missing,
    malformed, unknown or revoked."""
    if not token:
        raise AccessDenied("no API token: send 'Authorization: Bearer af_...'")
    if not _TOKEN.fullmatch(token):
        raise AccessDenied("malformed API token")
    record = store.find_token(token_hash(token))
    if record is None:
        raise AccessDenied("unknown API token")
    if record.revoked_at is not None:
        raise AccessDenied(f"API token {record.token_id} was revoked")
    return record


def require_role(record: TokenRecord, role: Role) -> None:
    """`AccessDenied` (403) unless the token's role includes `role`."""
    if ROLES.index(record.role) < ROLES.index(role):
        raise AccessDenied(f"token {record.token_id} is a {record.role} token; this needs "
                           f"the {role} role", status=403)
