# ruff: noqa: F706, F821  (a code plan: the sandbox provides tools and built-ins)
# Bug triage as a code plan: classify every open bug in parallel, label each one, and close
# the stale ones once a maintainer approves the list; then tell the team.
#
# Tools (agentflow.demo): list_issues, classify_issue, label_issue, close_issue, notify.
#
#     import agentflow, agentflow.demo
#     result = agentflow.execute_plan("plans/triage.py", tools=agentflow.demo.TOOLS,
#                                     inputs={"repo": "acme/app"})
#     agentflow.approve(result.run_id, result.pending[0].id, by="you")
#     agentflow.resume(result.run_id, tools=agentflow.demo.TOOLS)
#
# Inputs, all optional: repo (default "acme/app").

repo = inputs.get("repo", "acme/app")
issues = list_issues(repo=repo, label="bug")


def classify(issue):
    return classify_issue(number=issue["number"], title=issue["title"], body=issue["body"],
                          days_inactive=issue["days_inactive"])


verdicts = parallel([lambda issue=issue: classify(issue) for issue in issues])
labels = []
stale = []
for issue, verdict in zip(issues, verdicts, strict=True):
    label_issue(number=issue["number"], label=verdict["label"])
    labels.append({"number": issue["number"], "label": verdict["label"]})
    if verdict["stale"]:
        stale.append(issue["number"])

closed = []
if stale and approve(f"Close {len(stale)} stale issues in {repo}: {stale}?", issues=stale):
    for number in stale:
        close_issue(number=number, comment="Closed by triage as stale; reopen if it still "
                    "happens.")
        closed.append(number)

notify(text=f"Triage of {repo}: {len(labels)} issues labelled, {len(closed)} closed as stale")
return {"labels": labels, "closed": closed}
