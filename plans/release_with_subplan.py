# ruff: noqa: F706, F821  (a code plan: the sandbox provides tools and built-ins)
# Release as a code plan that reuses a registered sub-plan: build a ref, then run the
# tenant's deploy_service plan (plans/deploy_service.json) as a durable child run for
# staging and, once that is live, for production. Each child asks its own approval, which
# shows on this run's pending list; a production deploy that is refused (its child skips
# the deploy, so its url is null) or whose child run fails is reported, and the release
# still completes.
#
#     import agentflow, agentflow.demo
#     engine = agentflow.Engine("sqlite:///agentflow.db")
#     acme = engine.tenant("acme", tools=agentflow.demo.TOOLS)
#     acme.plans.put("deploy_service", "plans/deploy_service.json")
#     run = acme.execute("plans/release_with_subplan.py", inputs={"ref": "v1.2"})
#     acme.approve(run.run_id, run.pending[-1].id, by="you")   # then resume, and again
#
# Inputs, all optional: ref (default "main").

sha = checkout(ref=inputs.get("ref", "main"))["sha"]
artifact = build(sha=sha)["artifact"]

staging = run_plan("deploy_service", artifact=artifact, environment="staging")
try:
    production = run_plan("deploy_service", artifact=artifact,
                          environment="production")["url"] or "not deployed: refused"
except ToolCallError as error:  # the child run failed or was cancelled
    production = f"not deployed: {error.message}"

notify(text=f"{artifact}: staging {staging['url']}, production {production}")
return {"staging": staging["url"], "production": production}
