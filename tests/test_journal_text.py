"""The executor's journal entries and JSON texts, made on its hot path without the general
machinery, are exactly what the general machinery makes (issue 12, part 2)."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflow.executors.journal import _encode, _new_entry, canonical_json
from agentflow.store.base import JournalEntry

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3), max_leaves=12)


def test_an_entry_made_on_the_hot_path_equals_the_constructed_one_in_every_field() -> None:
    made = _new_entry("s[1]", "intent", {"args": {"x": 1}}, 2, "noop", "ab", 5.0, "{}")
    built = JournalEntry(key="s[1]", kind="intent", data={"args": {"x": 1}}, attempt=2,
                         tool="noop", args_hash="ab", at=5.0, text="{}")
    assert type(made) is JournalEntry
    assert [getattr(made, f.name) for f in fields(JournalEntry)] == \
        [getattr(built, f.name) for f in fields(JournalEntry)]
    assert made == built


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_texts_are_the_json_encoders_own(value: Any) -> None:
    assert canonical_json(value) == json.dumps(value, sort_keys=True, separators=(",", ":"),
                                               ensure_ascii=False)
    assert _encode(value) == json.dumps(value, separators=(",", ":"), allow_nan=False)


def test_what_json_cannot_hold_is_refused_as_by_the_encoder() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        _encode({"a": float("nan")})
    with pytest.raises(TypeError, match="not JSON serializable"):
        canonical_json({"a": object()})
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(ValueError, match="Circular reference"):
        canonical_json(looped)
