"""`agentflow serve` and `agentflow tokens`: the web console's commands (the `[web]` extra).

Kept apart from `commands.py`; they register on the same `app`."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.table import Table

from agentflow.cli.commands import (
    CliError,
    JsonOption,
    StoreOption,
    ToolsOption,
    _engine,
    _tools,
    app,
    console,
)
from agentflow.engine.html import clock
from agentflow.engine.tokens import ROLES, create_token

tokens_app = typer.Typer(
    help="Manage the API tokens of `agentflow serve` (create, list, revoke).\n\n"
         "Example: agentflow tokens create --tenant acme --role approver --name alice",
    no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@app.command()
def serve(
    store: StoreOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    tools: ToolsOption = None,
    poll: Annotated[float, typer.Option(
        "--poll", help="Seconds between looks for due runs to resume with --tools "
        "(0: resume nothing here, leave it to `agentflow worker`).")] = 0.5,
) -> None:
    """Serve the JSON API (/api, OpenAPI at /docs), the console (/) and approval links.

    Callers authenticate with `agentflow tokens create` tokens. With --tools the server
    also resumes runs once they are decided, like `agentflow worker`.

    Example: agentflow serve --store sqlite:///agentflow.db --port 8080 --tools agentflow.demo
    """
    try:
        import uvicorn

        from agentflow.web.app import create_app
    except ImportError as error:
        raise CliError(f"agentflow serve needs the web extra: pip install 'agentflow[web]' "
                       f"({error})") from None
    loaded = _tools(tools)
    with _engine(store, must_exist=False) as engine:
        web = create_app(engine, tools=loaded, worker_poll=poll if loaded and poll > 0 else None)
        base = f"http://{host}:{port}"
        console.print(f"serving the console at {base}/ (open {base}/#token=TOKEN with a token "
                      f"of `agentflow tokens create`), the API at {base}/api and its "
                      f"OpenAPI at {base}/docs; "
                      + ("decided runs resume here; " if loaded and poll > 0 else "")
                      + "Ctrl-C stops", highlight=False, soft_wrap=True)
        uvicorn.run(web, host=host, port=port, log_level="warning")


@tokens_app.command("create")
def tokens_create(
    tenant: Annotated[str, typer.Option("--tenant", help="The tenant the token acts for.")],
    role: Annotated[str, typer.Option(
        "--role", help=f"One of {', '.join(ROLES)}.")] = "viewer",
    name: Annotated[str, typer.Option(
        "--name", help="Who holds it; an approver token decides under this name.")] = "",
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a token and print it (shown only now; the store keeps its hash).

    Example: agentflow tokens create --tenant acme --role approver --name alice
    """
    with _engine(store, must_exist=False) as engine:
        token, record = create_token(engine.store, tenant=tenant, role=role,
                                     name=name or f"{role}@{tenant}")
    if as_json:
        typer.echo(json.dumps({"token": token, "id": record.token_id, "tenant": tenant,
                               "role": role, "name": record.name}))
    else:
        typer.echo(token)


@tokens_app.command("list")
def tokens_list(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's.")] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """List tokens (ids, tenants, roles, names; never the tokens themselves).

    Example: agentflow tokens list --tenant acme
    """
    with _engine(store) as engine:
        records = engine.store.list_tokens(tenant)
    if as_json:
        typer.echo(json.dumps([{"id": r.token_id, "tenant": r.tenant_id, "role": r.role,
                                "name": r.name, "created_at": r.created_at,
                                "revoked_at": r.revoked_at} for r in records], indent=2))
        return
    table = Table("id", "tenant", "role", "name", "created", "revoked")
    for r in records:
        table.add_row(r.token_id, r.tenant_id, r.role, r.name, clock(r.created_at),
                      clock(r.revoked_at) if r.revoked_at else "")
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (from tokens list).",
                                            show_default=False)],
    store: StoreOption = None,
) -> None:
    """Revoke a token: it is refused from now on.

    Example: agentflow tokens revoke 3fa2c1ab9e01
    """
    with _engine(store) as engine:
        if not engine.store.revoke_token(token_id, time.time()):
            raise CliError(f"no live token with id {token_id!r}")
    typer.echo(f"revoked {token_id}")
