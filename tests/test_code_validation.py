"""Code-plan validation: every forbidden construct named at its line and column, all at once."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from agentflow.errors import PlanValidationError
from agentflow.plan.code import CodePlan, code_plan
from agentflow.sandbox import compile_code_plan
from agentflow.tools import tool
from tests.support.sandbox_host import TOOLS, compile_source


def issues_of(source: str) -> list[tuple[str, str]]:
    with pytest.raises(PlanValidationError) as caught:
        compile_source(source)
    return [(issue.path, issue.message) for issue in caught.value.issues]


ISSUE_4_EXAMPLE = '''
issues = list_issues(repo=inputs["repo"], label="bug")
results = parallel([lambda i=i: triage(issue=i) for i in issues])
if approve(f"Close {len(issues)} stale issues?"):
    for i in issues:
        close_issue(number=i["number"])
sleep(hours=1)
return {"closed": len(issues)}
'''

DESIGN_8_EXAMPLE = '''
"""Wait for CI, ask a human, then report; every built-in of DESIGN section 8."""
started = now()
event = wait_for_event("ci-finished", timeout=3600)
status = event.get("status", "unknown") if isinstance(event, dict) else str(event)
if status != "green" and not approve("CI is not green; ship anyway?", status=status):
    return {"shipped": False, "status": status}
sleep(30)
labels = parallel([lambda issue=issue: triage(issue=issue) for issue in inputs["issues"]])
counts = {}
for label in labels:
    counts[label] = counts.get(label, 0) + 1
try:
    close_issue(number=int(inputs["number"]))
except (ToolCallError, ValueError) as error:
    note(text=f"could not close: {error}")
return {"shipped": True, "status": status, "counts": counts, "since": started}
'''


@pytest.mark.parametrize("source", [ISSUE_4_EXAMPLE, DESIGN_8_EXAMPLE],
                         ids=["issue-4-example", "design-8-example"])
def test_documented_examples_compile(source: str) -> None:
    compiled = compile_source(source)
    assert compiled.plan_hash == hashlib.sha256(textwrap.dedent(source).encode()).hexdigest()
    assert compiled.code.co_filename == "<plan code_plan>"


def test_code_plan_reads_a_py_file(tmp_path: Path) -> None:
    path = tmp_path / "triage.py"
    path.write_text(ISSUE_4_EXAMPLE, encoding="utf-8")
    assert code_plan(str(path)) == CodePlan(source=ISSUE_4_EXAMPLE, name="triage")
    assert code_plan(path, name="custom") == CodePlan(source=ISSUE_4_EXAMPLE, name="custom")


def test_code_plan_treats_other_strings_as_source(tmp_path: Path) -> None:
    assert code_plan("return 1") == CodePlan(source="return 1", name="code_plan")
    missing = str(tmp_path / "missing.py")
    assert code_plan(missing).source == missing  # not an existing file: it is the source
    with pytest.raises(FileNotFoundError):
        code_plan(tmp_path / "missing.py")  # a Path always names a file


FORBIDDEN = [
    pytest.param("import os", "1:1", "import statements are not allowed", id="import"),
    pytest.param("from os import path", "1:1", "import statements are not allowed",
                 id="from-import"),
    pytest.param("x = 1\nx.__class__", "2:1", "attribute '__class__' is not allowed",
                 id="dunder-attribute"),
    pytest.param("__import__('os')", "1:1", "name '__import__' is not allowed", id="dunder-name"),
    pytest.param("g = (x for x in [])\ng.gi_frame", "2:1",
                 "attribute 'gi_frame' is not allowed: it exposes interpreter internals",
                 id="frame-attribute"),
    pytest.param("ValueError.mro()", "1:1", "attribute 'mro' is not allowed", id="mro"),
    pytest.param("def f():\n    global x", "2:5", "'global' statements are not allowed",
                 id="global"),
    pytest.param("def f():\n    x = 1\n    def g():\n        nonlocal x", "4:9",
                 "'nonlocal' statements are not allowed", id="nonlocal"),
    pytest.param("try:\n    pass\nexcept:\n    pass", "3:1", "bare 'except:' is not allowed",
                 id="bare-except"),
    pytest.param("try:\n    pass\nexcept BaseException:\n    pass", "3:8",
                 "catching 'BaseException' is not allowed", id="except-base-exception"),
    pytest.param("try:\n    pass\nexcept (ValueError, GeneratorExit):\n    pass", "3:21",
                 "catching 'GeneratorExit' is not allowed", id="except-generator-exit"),
    pytest.param("try:\n    pass\nexcept ValueError if True else KeyError:\n    pass", "3:8",
                 "an except clause must name exception classes", id="except-expression"),
    pytest.param("try:\n    pass\nexcept* ValueError:\n    pass", "1:1",
                 "'except*' is not supported", id="except-star"),
    pytest.param("try:\n    approve('x')\nfinally:\n    return 1", "4:5",
                 "'return' inside 'finally' is not allowed", id="return-in-finally"),
    pytest.param("for i in []:\n    try:\n        pass\n    finally:\n        continue", "5:9",
                 "'continue' inside 'finally' is not allowed", id="continue-in-finally"),
    pytest.param("exec('x = 1')", "1:1", "'exec' is not available: dynamic code",
                 id="exec"),
    pytest.param("eval('1')", "1:1", "'eval' is not available: dynamic code", id="eval"),
    pytest.param("compile('1', '', 'eval')", "1:1", "'compile' is not available",
                 id="compile"),
    pytest.param("open('/etc/passwd')", "1:1", "'open' is not available: plans have no direct I/O",
                 id="open"),
    pytest.param("getattr(1, 'real')", "1:1", "'getattr' is not available: introspection",
                 id="getattr"),
    pytest.param("type('T', (), {})", "1:1", "'type' is not available", id="type"),
    pytest.param("vars()", "1:1", "'vars' is not available", id="vars"),
    pytest.param("print('hi')", "1:1", "'print' is not available", id="print"),
    pytest.param("class C:\n    pass", "1:1", "class definitions are not supported",
                 id="class"),
    pytest.param("async def f():\n    pass", "1:1", "async code is not supported", id="async"),
    pytest.param("with x:\n    pass", "1:1", "'with' statements are not supported", id="with"),
    pytest.param("match 1:\n    case 1:\n        pass", "1:1", "match statements are not "
                 "supported", id="match"),
    pytest.param("yield 1", "1:1", "'yield' outside a function", id="top-level-yield"),
    pytest.param("f = lambda: (yield)", "1:14", "'yield' inside a lambda", id="lambda-yield"),
    pytest.param("approve = 1", "1:1", "cannot assign to 'approve': it is a plan built-in",
                 id="rebind-plan-builtin"),
    pytest.param("note = 1", "1:1", "cannot assign to 'note': it is a tool", id="rebind-tool"),
    pytest.param("for ValueError in []:\n    pass", "1:5",
                 "cannot assign to 'ValueError': it is an exception class",
                 id="rebind-exception"),
    pytest.param("inputs['repo'] = 'x'", "1:1", "inputs are read-only", id="write-inputs"),
    pytest.param("note.flag = True", "1:1", "assigning or deleting attributes is not allowed",
                 id="attribute-assignment"),
    pytest.param("def f(_getattr_=None, /):\n    pass", "1:7",
                 "name '_getattr_' is not allowed", id="positional-only-guard-shadow"),
    pytest.param("'{0.__class__}'.format(1)", "1:1",
                 "format field {0.__class__} reads an attribute or item", id="format-attribute"),
    pytest.param("'{0[x]}'.format({})", "1:1", "format field {0[x]} reads an attribute or item",
                 id="format-item"),
    pytest.param("'{:{0.real}}'.format(1)", "1:1", "format field {0.real} reads an attribute",
                 id="format-nested-spec"),
    pytest.param("x = 1\nx.a__roles__", "2:1", "__roles__", id="restrictedpython-finding"),
    pytest.param("for i in []:\n    pass\nbreak", "3:1", "syntax error: 'break' outside loop",
                 id="compiler-finding"),
]


@pytest.mark.parametrize(("source", "position", "message"), FORBIDDEN)
def test_forbidden_construct_is_named_at_its_position(source: str, position: str,
                                                      message: str) -> None:
    found = issues_of(source)
    assert any(path == f"$.source:{position}" and message in text for path, text in found), found


def test_every_issue_is_listed_in_source_order() -> None:
    found = issues_of('''
        import os
        x = inputs.__dict__
        try:
            approve("go?")
        except:
            pass
        list_issues("acme/app")
        send_mail(to="x")
    ''')
    assert [path for path, _ in found] == [
        "$.source:2:1", "$.source:3:5", "$.source:6:1", "$.source:8:13", "$.source:9:1"]


def test_syntax_error_has_line_and_column() -> None:
    assert issues_of("x = (1,\ny = 2") == [("$.source:1:5", "syntax error: '(' was never closed")]


def test_column_counts_characters_not_bytes() -> None:
    found = issues_of("s = 'héllo'; x.__class__")
    assert found[0][0] == "$.source:1:14"


def test_unknown_tool_is_caught_with_a_suggestion() -> None:
    assert issues_of("close_issues(number=1)") == [(
        "$.source:1:1", "unknown tool or function 'close_issues': not a registered tool, plan "
        "built-in or variable of this plan; did you mean 'close_issue'?")]


def test_unknown_name_is_caught() -> None:
    assert issues_of("return os.environ") == [(
        "$.source:1:8", "unknown name 'os': not a registered tool, plan built-in or variable "
        "of this plan")]


def test_wrong_keyword_argument_is_caught() -> None:
    assert issues_of("close_issue(numbr=1)") == [
        ("$.source:1:1", "tool 'close_issue' is missing the required argument 'number'"),
        ("$.source:1:13", "tool 'close_issue' has no argument 'numbr' (expected: number)"),
    ]


def test_positional_arguments_to_a_tool_are_refused() -> None:
    assert issues_of("close_issue(1)") == [
        ("$.source:1:13", "tool 'close_issue' takes keyword arguments only, e.g. "
         "close_issue(name=value)")]


def test_optional_arguments_may_be_left_out_and_splats_are_checked_at_run_time() -> None:
    compile_source('list_issues(repo="a")\nargs = {"number": 1}\nclose_issue(**args)')


def test_plan_variables_and_functions_are_known_names() -> None:
    compile_source('''
        def double(x):
            return x * 2
        values = [double(v) for v in range(3)]
        total = sum(values)
        type = "bug"  # a variable may use the name of a refused built-in
        return {"total": total, "type": type}
    ''')


def test_the_throwaway_name_is_allowed() -> None:
    compile_source("for _ in range(3):\n    pass\nfirst, _ = 1, 2\nreturn _")


def test_annotations_are_ignored() -> None:
    compile_source("def f(x: SomeType) -> Other:\n    y: int = x\n    z: str\n    return y\n"
                   "return f(1)")


def test_tool_names_may_not_hide_built_ins() -> None:
    @tool(name="sorted")
    def sorted_tool(items: list[int]) -> list[int]:
        return items

    with pytest.raises(PlanValidationError) as caught:
        compile_code_plan(CodePlan("return 1"), {**TOOLS, "sorted": sorted_tool})
    assert [issue.path for issue in caught.value.issues] == ["$.tools.sorted"]


def test_deeply_nested_source_is_refused_cleanly() -> None:
    with pytest.raises(PlanValidationError) as caught:
        compile_source("x = " + "-" * 100_000 + "1")
    assert caught.value.issues[0].path == "$.source"


def test_error_message_names_the_plan() -> None:
    with pytest.raises(PlanValidationError, match="code plan 'release' is invalid"):
        compile_code_plan(CodePlan("import os", name="release"), TOOLS)
