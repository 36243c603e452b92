"""A tenant's plan registry: plans kept by name, each version the content hash that runs
are pinned by, so a tenant updates a pipeline without redeploying anything.

`tenant.plans.put("release", plan)` validates the plan against the tenant's tools and
makes it the current version; `tenant.execute("release")` pins a new run to the version
current at that moment (`"release@<hash>"` to a given one). A later `put` never changes a
run that has started: the run keeps resuming its own version.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from agentflow.engine.loading import plan_data, stored_plan
from agentflow.errors import PlanNotFound
from agentflow.store import PlanName

if TYPE_CHECKING:
    from agentflow.engine.tenant import Tenant

NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]{0,127}"
"""A registered plan name: letters, digits, '_' and '-' (no '.' or '/', so a name is never
read as a file path)."""
_REFERENCE = re.compile(rf"({NAME_PATTERN})(?:@([0-9a-f]{{4,64}}))?")


def parse_reference(text: str) -> tuple[str, str | None] | None:
    """("release", None) for "release", ("release", "3fa2...") for "release@3fa2..."; None
    for a string that names no registered plan (a path, JSON text)."""
    match = _REFERENCE.fullmatch(text)
    return None if match is None else (match.group(1), match.group(2))


def check_name(name: Any) -> str:
    if not isinstance(name, str) or re.fullmatch(NAME_PATTERN, name) is None:
        raise ValueError(f"invalid plan name {name!r}: use letters, digits, '_' and '-' "
                         "(1 to 128 characters, not starting with a digit or '-')")
    return name


class PlanRegistry:
    """`tenant.plans`: the tenant's plans by name and version."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.store = tenant.engine.store

    def put(self, name: str, plan: Any) -> str:
        """Validate `plan` (a dict, JSON text, a .json/.py path, a `Plan`, a `CodePlan`)
        against the tenant's tools and policy and make it the current version of `name`. Returns the
        version: the plan's content hash (the same content always gives the same one)."""
        check_name(name)
        compiled = self.tenant.validate(plan, name=name)
        self.store.put_plan_version(self.tenant.id, name,
                                    stored_plan(self.tenant.id, compiled, time.time()))
        return compiled.plan_hash

    def version(self, name: str, version: str | None = None) -> str:
        """The full hash of `version` of `name` (a prefix of 4+ hex digits is enough when it
        is unique), or of the current version. `PlanNotFound` otherwise."""
        check_name(name)
        if version is None:
            current = self.store.current_plan_version(self.tenant.id, name)
            if current is None:
                raise PlanNotFound(name, self.tenant.id,
                                   known=[plan.name for plan in self.list()])
            return current
        if self.store.has_plan_version(self.tenant.id, name, version):
            return version
        matches = [h for h, _ in self.store.plan_versions(self.tenant.id, name)
                   if h.startswith(version)]
        if len(matches) != 1:
            raise PlanNotFound(name, self.tenant.id, version)
        return matches[0]

    def get(self, name: str, version: str | None = None) -> Any:
        """The plan data of `version` of `name` (default: the current one): a dict for a
        step graph, a `CodePlan` for restricted Python."""
        plan_hash = self.version(name, version)
        stored = self.store.get_plan(self.tenant.id, plan_hash)
        if stored is None:
            raise PlanNotFound(name, self.tenant.id, plan_hash)
        return plan_data(stored)

    def versions(self, name: str) -> list[tuple[str, float]]:
        """(version, created_at) of each version of `name`, newest (current) first; empty
        for a name the tenant never registered."""
        return self.store.plan_versions(self.tenant.id, check_name(name))

    def list(self) -> list[PlanName]:
        """The tenant's plan names, with their current versions."""
        return self.store.plan_names(self.tenant.id)

    def delete(self, name: str, version: str) -> None:
        """Forget one version of `name`. Refused with `PlanInUse` (nothing changed) while a
        run that has not finished is pinned to it; finished runs keep their copy."""
        self.store.delete_plan_version(self.tenant.id, name, self.version(name, version))
