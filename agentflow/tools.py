"""Tools: the only side effects a plan can have.

`@tool` turns a typed function (sync or async) into a `Tool` with a JSON Schema for its
arguments and its result, derived from the type hints by pydantic. A parameter annotated
`ToolContext` is injected by the executor and never appears in the schema.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints, overload

import jsonschema
import pydantic
from pydantic_core import to_jsonable_python

from agentflow.errors import NotJsonData, ToolArgumentsError, ToolNotFound

if TYPE_CHECKING:
    from agentflow.plan.models import RetryPolicy


@dataclass(frozen=True)
class ToolContext:
    """What a tool may know about the call it serves.

    `idempotency_key` is the same for every attempt of the same call of the same run (also
    across crashes), so a tool can pass it to an external API and make its effect
    exactly-once. It is `af1-` and 64 hex digits, a SHA-256 of the tenant, run, call
    position and arguments (`agentflow.idempotency_key` computes it), so calls of different
    tenants, runs, positions or arguments never share one. `attempt` counts from 1 and grows
    with retries and with crash recoveries.
    `trace_context` is the W3C trace context of the call's span (`{"traceparent": ...}`)
    when the engine is traced (`agentflow.engine.telemetry`), else empty: pass it on as
    HTTP headers, or to `opentelemetry.propagate.extract`, to continue the trace.
    """

    run_id: str
    step_id: str
    call_key: str
    attempt: int
    idempotency_key: str
    tenant_id: str = "default"
    # Callable[[int, float], None] | None: typed Any so that pydantic can still describe a
    # ToolContext (a tool may annotate `ctx: ToolContext | None`, an ordinary parameter)
    charger: Any = field(default=None, repr=False, compare=False)
    trace_context: Mapping[str, str] = field(default_factory=dict)

    def charge(self, *, tokens: int = 0, cost_usd: float = 0.0) -> None:
        """Report what this call spent (model tokens, money). It counts against the run's
        budget (`budget={"llm_tokens": ..., "cost_usd": ...}` or the tenant's policy) at
        once and durably, even if the call fails or the process dies afterwards."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be a whole number >= 0, not {tokens!r}")
        if isinstance(cost_usd, bool) or not isinstance(cost_usd, int | float) \
                or not cost_usd >= 0 or cost_usd == float("inf"):
            raise ValueError(f"cost_usd must be a finite number >= 0, not {cost_usd!r}")
        if self.charger is not None:
            self.charger(tokens, float(cost_usd))


ApprovalPolicy = bool | Callable[[dict[str, Any]], bool]


@dataclass
class Tool:
    """A callable a plan may call, with the schemas the validator and the LLM planner use."""

    fn: Callable[..., Any]
    name: str = ""
    description: str = ""
    side_effects: bool = True
    requires_approval: ApprovalPolicy = False
    retry: dict[str, Any] | None = None
    overlapping_retries: bool = False
    approvers: list[str] | None = None
    input_schema: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    context_param: str | None = None
    is_async: bool = False
    _arguments_model: type[pydantic.BaseModel] | None = field(default=None, repr=False)
    _validator: Any = field(default=None, repr=False)
    _schema_from_model: bool = field(default=False, repr=False)
    _retry_policy: RetryPolicy | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.fn.__name__
        self.description = self.description or inspect.getdoc(self.fn) or ""
        self.is_async = inspect.iscoroutinefunction(self.fn)
        if self.approvers is not None and (
                isinstance(self.approvers, str) or not self.approvers
                or not all(isinstance(name, str) and name for name in self.approvers)):
            raise ValueError(f"tool {self.name!r}: approvers must be a non-empty list of "
                             f"names, not {self.approvers!r}")
        if self.approvers is not None:
            self.approvers = list(self.approvers)  # the caller's list may change later
        if not self.input_schema or self._arguments_model is None:
            model, context_param, output_schema = _schemas_from_signature(self.fn, self.name)
            self._arguments_model = model
            self.context_param = context_param
            self._schema_from_model = not self.input_schema
            self.input_schema = self.input_schema or model.model_json_schema()
            if self.output_schema is None:
                self.output_schema = output_schema
        self.input_schema.setdefault("type", "object")
        self._validator = jsonschema.Draft202012Validator(self.input_schema)
        if self.retry is not None:
            from agentflow.plan.models import RetryPolicy  # here: the plan layer imports us

            self._retry_policy = RetryPolicy.model_validate(self.retry)

    @property
    def retry_policy(self) -> RetryPolicy | None:
        """The tool's default retry policy, validated when the tool was declared."""
        return self._retry_policy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling a tool outside a plan calls the function itself."""
        return self.fn(*args, **kwargs)

    def argument_errors(self, args: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(JSON path inside the arguments, message) for each way `args` misses the schema."""
        return [
            ("".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path),
             err.message)
            for err in sorted(self._validator.iter_errors(dict(args)), key=lambda e: e.path)
        ]

    def prepare_arguments(self, args: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Validate `args` against the input schema and convert them to the declared types.

        When the schema was derived from the signature, pydantic's strict validation of the
        same model decides first (a microsecond, against tens for jsonschema); anything it
        refuses is checked by jsonschema, which gives the messages, and then converted
        leniently (JSON strings to dates, enums, ...)."""
        model = self._arguments_model
        if model is not None and self._schema_from_model:
            try:
                parsed = model.__pydantic_validator__.validate_python(
                    args if type(args) is dict else dict(args), strict=True)
            except pydantic.ValidationError:
                pass
            else:
                return _arguments_of(parsed)
        errors = self.argument_errors(args)
        if errors:
            detail = "; ".join(f"args{path or ''}: {message}" for path, message in errors)
            raise ToolArgumentsError(f"{where}: arguments for tool {self.name!r} are invalid: "
                                     f"{detail}")
        if model is None:
            return dict(args)
        try:
            parsed = model.model_validate(dict(args))
        except pydantic.ValidationError as error:
            raise ToolArgumentsError(f"{where}: arguments for tool {self.name!r} are invalid: "
                                     f"{error}") from None
        return _arguments_of(parsed)

    spends_tokens = False  # a tool that calls a model says so (see agentflow.llm)

    def token_limit(self, args: Mapping[str, Any]) -> int | None:
        """Most tokens a call with `args` may spend; None when unknown."""
        return None

    def tokens_spent(self, result: Any) -> int:
        """Tokens a completed call spent, read from its recorded result."""
        return 0

    def needs_approval(self, args: Mapping[str, Any]) -> bool:
        """Whether this call must wait for a human decision, whatever the plan says."""
        policy = self.requires_approval
        return bool(policy(dict(args))) if callable(policy) else bool(policy)


def _schemas_from_signature(
    fn: Callable[..., Any], name: str
) -> tuple[type[pydantic.BaseModel], str | None, dict[str, Any] | None]:
    """The pydantic model of the arguments, the context parameter and the output schema."""
    signature = inspect.signature(fn)
    try:
        hints = get_type_hints(fn, include_extras=True)
    except (NameError, TypeError):
        hints = {}
    fields: dict[str, Any] = {}
    context_param: str | None = None
    for param in signature.parameters.values():
        annotation = hints.get(param.name, Any)
        if annotation is ToolContext or _optional_of(annotation) is ToolContext:
            context_param = param.name
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is param.empty else param.default
        if _reserved_by_pydantic(param.name):
            # stored under a name of our own, read and written under the parameter's name
            fields[f"argument_{len(fields)}"] = (annotation, pydantic.Field(
                default, alias=param.name,
                title=param.name.strip("_").replace("_", " ").title() or param.name))
        else:
            fields[param.name] = (annotation, default)
    model = pydantic.create_model(
        f"{name}_arguments", __config__=pydantic.ConfigDict(extra="forbid"), **fields
    )
    output_schema: dict[str, Any] | None = None
    returns = hints.get("return", Any)
    if returns is not Any and returns is not None and returns is not type(None):
        try:
            output_schema = pydantic.TypeAdapter(returns).json_schema()
        except pydantic.PydanticUserError:
            output_schema = None
    return model, context_param, output_schema


def _reserved_by_pydantic(name: str) -> bool:
    """Whether pydantic would not take `name` as a field name as it is (`model_config`,
    `model_dump`, `_private`, `schema`, ...): such a parameter is given an alias."""
    return name.startswith(("_", "model_")) or hasattr(pydantic.BaseModel, name)


def _arguments_of(parsed: pydantic.BaseModel) -> dict[str, Any]:
    """The validated arguments by parameter name (an aliased field by its alias)."""
    names = _field_names(type(parsed))
    if names is None:
        return dict(parsed.__dict__)
    return {alias: getattr(parsed, name) for alias, name in names}


@functools.lru_cache(maxsize=4096)
def _field_names(model: type[pydantic.BaseModel]) -> tuple[tuple[str, str], ...] | None:
    """(parameter name, field name) of an arguments model, read once per model: pydantic's
    `model_fields` is a descriptor that costs more than the call it serves. None when no
    field has an alias: the fields (all of them, `extra="forbid"`) are the parameters."""
    names = tuple((info.alias or name, name) for name, info in model.model_fields.items())
    return None if all(alias == name for alias, name in names) else names


def _optional_of(annotation: Any) -> Any:
    """`X` for an annotation `X | None` (or `Optional[X]`), else None."""
    arguments = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(arguments) == 1:
        return arguments[0]
    return None


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    side_effects: bool = True,
    requires_approval: ApprovalPolicy = False,
    retry: dict[str, Any] | None = None,
    overlapping_retries: bool = False,
    approvers: list[str] | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    side_effects: bool = True,
    requires_approval: ApprovalPolicy = False,
    retry: dict[str, Any] | None = None,
    overlapping_retries: bool = False,
    approvers: list[str] | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare a function as a tool: `@tool` or `@tool(name=..., requires_approval=...)`.

    `retry` is the tool's default retry policy, in the plan format's `retry` fields
    (`{"max_attempts": 3, "retry_on": ["ConnectionError"]}`); a plan step's own `retry`
    takes precedence. Code plans use it for every call of the tool.

    A sync tool that passes its step's `timeout` cannot be stopped (Python cannot kill a
    thread): it runs on, and its retry starts only once it has ended, unless
    `overlapping_retries=True` says two attempts may run at once.

    `requires_approval` (True, or a function of the arguments) makes each call wait for a
    person, and `approvers` says who may decide any gate on this tool's calls. A plan can add
    gates but cannot weaken these: no expiry, no auto-approval, no approvers of its own on
    a gate the tool requires (see `agentflow.executors.gates`)."""

    def wrap(function: Callable[..., Any]) -> Tool:
        return Tool(function, name=name or "", description=description or "",
                    side_effects=side_effects, requires_approval=requires_approval,
                    retry=retry, overlapping_retries=overlapping_retries,
                    approvers=approvers)

    return wrap(fn) if fn is not None else wrap


_JSON_SCALARS = frozenset({int, bool, type(None)})


def is_json_scalar(value: Any) -> bool:
    """True for a value JSON holds as it is: no NaN or infinity, no lone surrogate."""
    kind = type(value)
    if kind is str:
        return bool(value.isascii() or _encodes(value))
    return kind in _JSON_SCALARS or (kind is float and math.isfinite(value))


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_json_value(value: Any, what: str = "the value") -> Any:
    """A tool result as the plain JSON data a replay will read back from the journal
    (pydantic models, dataclasses, tuples and sets included), so a first run and a replay
    see identical values. `NotJsonData`, naming `what` and the place, for what JSON cannot
    hold: other objects, NaN and infinity, and strings that are not valid Unicode (lone
    surrogates: encode an undecodable file name yourself, e.g. `os.fsencode(name).hex()`).
    One rule for every value a run stores, so hashing and storing never meet such text.
    A JSON scalar, or a flat object of them (most arguments and many results), is already
    that: it is taken (the object copied) without the round trip through JSON text."""
    if is_json_scalar(value):
        return value
    if type(value) is dict and all(type(key) is str and is_json_scalar(key)
                                   and is_json_scalar(item) for key, item in value.items()):
        return dict(value)
    try:
        text = json.dumps(to_jsonable_python(value), allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except ValueError as error:  # also PydanticSerializationError, UnicodeEncodeError
        try:
            where = _first_problem(value, "$")
        except RecursionError:
            where = "$ (nested too deeply)"
        raise NotJsonData(f"{what} is not JSON data at {where}: {error}") from None
    except RecursionError:
        raise NotJsonData(f"{what} is nested too deeply to be JSON data") from None
    return json.loads(text)


def _first_problem(value: Any, path: str) -> str:
    """The JSON path of the first part of `value` that JSON cannot hold, for messages."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path} (a string with a lone surrogate: {value!r})"
        return path
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path} ({value!r})"
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _first_problem(item, f"{path}.{key}")
            if found != f"{path}.{key}":
                return found
        return path
    if isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            found = _first_problem(item, f"{path}[{index}]")
            if found != f"{path}[{index}]":
                return found
        return path
    if value is None or isinstance(value, bool | int | float):
        return path
    return f"{path} (a {type(value).__name__})"


def tool_registry(tools: Iterable[Tool | Callable[..., Any]] | None) -> dict[str, Tool]:
    """Tools by name; plain callables are wrapped, duplicate names are an error."""
    registry: dict[str, Tool] = {}
    for item in tools or ():
        wrapped = item if isinstance(item, Tool) else Tool(item)
        if wrapped.name in registry and registry[wrapped.name] is not wrapped:
            raise ValueError(f"two tools are named {wrapped.name!r}")
        registry[wrapped.name] = wrapped
    return registry


def tools_from_module(spec: str) -> list[Tool]:
    """The tools named by `package.module` (its `TOOLS` list, else every `Tool` in it) or by
    `package.module:attribute` (a `Tool` or a list of them)."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ToolNotFound(f"cannot import tool module {module_name!r}: {error}") from None
    if attribute:
        if not hasattr(module, attribute):
            raise ToolNotFound(f"module {module_name!r} has no attribute {attribute!r}")
        found = getattr(module, attribute)
    else:
        found = getattr(module, "TOOLS", None)
        if found is None:
            found = [value for value in vars(module).values() if isinstance(value, Tool)]
    items = found if isinstance(found, list | tuple) else [found]
    tools = [item for item in items if isinstance(item, Tool)]
    if not items:
        raise ToolNotFound(f"{spec!r} does not name agentflow tools: module {module_name!r} "
                           f"({getattr(module, '__file__', None) or 'built in'}) has none; "
                           "decorate its functions with @tool, or list them in TOOLS = [...]")
    if len(tools) != len(items):
        others = sorted({type(item).__name__ for item in items if not isinstance(item, Tool)})
        raise ToolNotFound(f"{spec!r} does not name agentflow tools: it holds "
                           f"{', '.join(others)} values; wrap functions with @tool "
                           "(or Tool(fn)) first")
    return tools
