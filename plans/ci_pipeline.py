# ruff: noqa: F706, F821  (a code plan: the sandbox provides tools and built-ins)
# CI/CD pipeline as a code plan: check out a ref, lint it, test it on every Python in
# parallel, build it, deploy it once a person approves, and always tell the team.
#
#     import agentflow, agentflow.demo
#     result = agentflow.execute_plan("plans/ci_pipeline.py", tools=agentflow.demo.TOOLS,
#                                     inputs={"ref": "v1.2", "environment": "staging"})
#     agentflow.approve(result.run_id, result.pending[0].id, by="you")
#     agentflow.resume(result.run_id, tools=agentflow.demo.TOOLS)
#
# Inputs, all optional: ref (default "main"), environment (default "staging").

ref = inputs.get("ref", "main")
environment = inputs.get("environment", "staging")

source = checkout(ref=ref)
sha = source["sha"]
report = lint(sha=sha)


def test_on(python):
    """One cell of the test matrix; a failed run of the suite is reported, not fatal."""
    try:
        return run_tests(python=python, sha=sha)
    except ToolCallError as error:
        return {"python": python, "passed": 0, "failed": 0, "error": error.message}


tests = parallel([lambda python=python: test_on(python) for python in source["pythons"]])
problems = [cell["python"] for cell in tests if cell["failed"] or "error" in cell]
artifact = build(sha=sha)["artifact"]

question = f"Deploy {artifact} to {environment}?"
if problems:
    question += f" Tests did not pass on Python {', '.join(problems)}."
deployment = None
if report["ok"] and approve(question, sha=sha, environment=environment):
    deployment = deploy(artifact=artifact, environment=environment)

outcome = f"deployed to {deployment['url']}" if deployment else "not deployed"
notify(text=f"{ref} at {sha}: {outcome}")
return {"sha": sha, "lint": report, "tests": tests, "artifact": artifact,
        "url": deployment["url"] if deployment else None}
