"""`when` conditions: an expression of `expressions` (its grammar, operators, functions and
limits), tested for truth, plus the status functions that only conditions may call.

Statuses (`steps.<id>.status`): `succeeded`, `failed`, `skipped`, and `rejected` for an
approval that was rejected (an approval step, or the approval gate of a tool step; an
approval that expires with on_expiry "reject" is rejected too).

Status functions, and how the executor combines them with the condition:

- `success()`: every dependency succeeded. A failed dependency with continue_on_error counts
  as succeeded, and so does a rejected one whose approval says on_reject "continue": the
  rejection is data, not an error (an approval step's output then has approved=false and the
  reason). A rejection with on_reject "skip" counts as neither success nor failure: like a
  skipped step, its dependents are skipped unless their condition says otherwise. One with
  on_reject "fail" counts as a failure.
- `failure()`: some ancestor (transitive dependency) failed. The compiled plan holds no
  transitive sets (quadratic in a chain's length): the executor propagates a "some ancestor
  failed" flag along `dependents` as steps settle.
- `always()`: true.
- A condition that calls none of them is ANDed with `success()`, so a step whose
  dependencies did not all succeed is skipped whatever its condition says; a condition that
  calls one is the whole rule (`always()` runs after failures and skips too).
- `when` is evaluated once per step, before a foreach expands, so it cannot use `item` or
  `index`.
"""

from __future__ import annotations

from agentflow.plan.expressions import STATUS_FUNCTIONS, Expression, compile_expression
from agentflow.plan.references import Reference, Scope

__all__ = ["STATUS_FUNCTIONS", "Condition", "compile_condition"]


class Condition:
    """A compiled `when` expression.

    `evaluate(scope)` is the truth of the expression (it raises only `ExpressionError`, for a
    function that cannot take its arguments); `references` lists the paths it reads (with
    the JSON path of the `when` field); `uses_status_function` tells the executor whether to
    AND it with `success()` (see the module docstring).
    """

    __slots__ = ("expression", "references", "text", "uses_status_function")

    def __init__(self, expression: Expression) -> None:
        self.expression = expression
        self.text = expression.text
        self.references: tuple[Reference, ...] = expression.references
        self.uses_status_function = expression.uses_status_function

    def evaluate(self, scope: Scope) -> bool:
        """Whether the condition holds in `scope`."""
        return bool(self.expression.evaluate(scope))


def compile_condition(text: str, json_path: str = "$") -> Condition:
    """Parse a condition once; raises PlanValidationError naming the column of a syntax error."""
    return Condition(compile_expression(text, json_path, what="condition"))
