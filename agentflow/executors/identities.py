"""Identities that leave the engine: idempotency keys and approval wait ids.

A tool passes `ctx.idempotency_key` to an outside API, and an approver names a decision by
its wait id, so each must name exactly one (tenant, run, call position, arguments). They are
built from a length-prefixed encoding of those fields, hashed with the full width of
SHA-256: `acme/r1` + `c1` and `acme` + `r1/c1` encode differently, and no prefix of a hash
stands for the whole.

Runs journaled before this encoding keep working: a call in flight at the upgrade keeps the
key its first attempt was given (`tenant/run/position`; such intents carry a 128-bit
argument hash, today's carry 256 bits), and an approval a person was asked for keeps its
old wait id, accepted only when its arguments hash the same.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from agentflow.executors.journal import CallRecord, args_hash, canonical_json

KEY_FORMAT = "af1"
"""Prefix of the idempotency keys of this encoding (a later one gets another prefix)."""
LEGACY_HASH_WIDTH = 32
"""Hex digits of the argument hashes journaled before full-width hashes."""


def encode_fields(*fields: str) -> bytes:
    """Each field as `<byte length>:<UTF-8 bytes>`, concatenated: no two tuples of strings
    encode alike, whatever characters the fields hold."""
    parts = []
    for text in fields:
        data = text.encode("utf-8", "surrogatepass")
        parts.append(b"%d:%s" % (len(data), data))
    return b"".join(parts)


def _digest(purpose: str, *fields: str) -> str:
    return hashlib.sha256(encode_fields(KEY_FORMAT, purpose, *fields)).hexdigest()


def idempotency_key(tenant_id: str, run_id: str, position: str, args: Any) -> str:
    """The idempotency key of the call at `position` (a step id, `step[3]`, a code plan's
    `c2`) of a run, with `args` as JSON data: what a tool sees in `ctx.idempotency_key`."""
    return key_for_hash(tenant_id, run_id, position, args_hash(args))


def key_for_hash(tenant_id: str, run_id: str, position: str, hashed_args: str) -> str:
    """`idempotency_key` from the arguments' hash (`args_hash`)."""
    digest = _run_prefix(tenant_id, run_id).copy()
    where = position.encode("utf-8", "surrogatepass")
    hashed = hashed_args.encode("utf-8", "surrogatepass")
    digest.update(b"%d:%s%d:%s" % (len(where), where, len(hashed), hashed))  # encode_fields
    return f"{KEY_FORMAT}-{digest.hexdigest()}"


@functools.lru_cache(maxsize=256)
def _run_prefix(tenant_id: str, run_id: str) -> Any:
    """SHA-256 fed the fields every key of one run starts with (copied for each key: the
    same digest as hashing all fields at once, for a fraction of the encoding)."""
    return hashlib.sha256(encode_fields(KEY_FORMAT, "idempotency", tenant_id, run_id))


def call_key(record: CallRecord | None, tenant_id: str, run_id: str, position: str,
             hashed_args: str) -> str:
    """The key to give the next attempt of a call. A call left in flight by a version
    before this encoding (its intent has a short hash) keeps that version's key
    (`tenant/run/position`): the tool may have used it already."""
    if record is not None and record.attempts > 0 and (
            record.args_hash is None or len(record.args_hash) == LEGACY_HASH_WIDTH):
        return f"{tenant_id}/{run_id}/{position}"
    return key_for_hash(tenant_id, run_id, position, hashed_args)


def approval_wait_id(tenant_id: str, run_id: str, key: str, hashed_args: str) -> str:
    """The wait id of an approval at journal `key` bound to arguments hashed `hashed_args`:
    the key (for people) and a digest of every field (for the binding)."""
    return f"{key}:{_digest('approval', tenant_id, run_id, key, hashed_args)}"


def legacy_wait_id(key: str, hashed_args: str) -> str:
    """The wait id an approval had before `approval_wait_id` (32 bits of the hash)."""
    return f"{key}:{hashed_args[:8]}"


def hash_matches(recorded: str | None, hashed: str) -> bool:
    """Whether a journaled argument hash (None: none was) can be the one of these
    arguments. A hash journaled by an older version is a 128-bit prefix of today's."""
    if recorded is None or recorded == hashed:
        return True
    return len(recorded) == LEGACY_HASH_WIDTH and hashed.startswith(recorded)


def same_args(bound: Any, args: Any) -> bool:
    """Whether the arguments an approval was bound to are exactly these ones."""
    return canonical_json(bound) == canonical_json(args)
