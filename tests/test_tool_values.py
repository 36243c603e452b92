"""`to_json_value`: what a tool call's arguments and result become before they are journaled.
The short path for JSON scalars and flat objects must give exactly what the round trip
through JSON text gives, so a first run and a replay still see identical values, and refuse
what it refuses."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic_core import to_jsonable_python

from agentflow.errors import NotJsonData
from agentflow.tools import to_json_value


def round_trip(value: Any) -> Any:
    return json.loads(json.dumps(to_jsonable_python(value), allow_nan=False))


@pytest.mark.parametrize("value", [
    0, -7, 10**30, "", "é", None, True, False, 1.5, -0.0, 1e300,
    {}, {"a": 1, "b": "x", "c": None, "d": 2.5, "e": True},
    {"nested": {"a": 1}}, {"tuple": (1, 2)}, {1: "int key"}, [1, 2], (1, "a"),
])
def test_the_value_is_what_the_json_round_trip_gives(value: Any) -> None:
    converted = to_json_value(value)
    assert converted == round_trip(value)
    assert type(converted) is type(round_trip(value))
    if isinstance(value, dict):
        assert converted is not value  # a copy: later changes to the tool's dict do not leak


@pytest.mark.parametrize("value", [math.nan, math.inf, {"a": -math.inf}, [math.nan],
                                   "\ud800", {"a": "x\udc00"}, {"\ud800": 1}])
def test_what_json_cannot_hold_is_refused_on_every_path(value: Any) -> None:
    with pytest.raises(NotJsonData):
        to_json_value(value)
