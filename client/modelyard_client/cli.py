"""``modelyard``: the registry from a shell or a CI job. Exit codes (see README.md):
0 ok, 1 error, 2 usage, 3 gates failed, 4 rejected, 5 timed out, 6 job failed, 7 auth."""
from __future__ import annotations

import functools
import json
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import click

from modelyard_client import config
from modelyard_client.client import ApiError, Client

OK, ERROR, USAGE, GATES_FAILED, REJECTED, TIMED_OUT, JOB_FAILED, AUTH = 0, 1, 2, 3, 4, 5, 6, 7


class Exit(Exception):
    def __init__(self, code: int, message: str = "", payload: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.payload = code, message, payload


def _client(ctx: click.Context) -> Client:
    url, token = config.resolve(ctx.obj.get("url"), ctx.obj.get("token"))
    client = Client(url, token, retries=ctx.obj.get("retries", 5), backoff=ctx.obj.get("backoff", 1.0))
    client.on_retry = lambda attempt, why, delay: click.echo(
        f"retrying in {delay:.0f}s after {why} (attempt {attempt})", err=True)
    return client


def command(group: click.Group, name: Optional[str] = None) -> Callable:
    """A subcommand with ``--json`` and one error policy: server messages on stderr, exit codes."""

    def decorate(fn: Callable) -> Callable:
        @group.command(name)
        @click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout (for scripts).")
        @click.pass_context
        @functools.wraps(fn)
        def wrapper(ctx: click.Context, as_json: bool, **kwargs: Any) -> None:
            ctx.obj["json"] = as_json
            try:
                result = fn(ctx, **kwargs)
            except ApiError as exc:
                _fail(ctx, AUTH if exc.status in (401, 403) else ERROR, str(exc),
                      {"error": {"code": exc.code, "message": exc.message, "status": exc.status,
                                 **({"details": exc.details} if exc.details else {})}})
            except Exit as exc:
                _fail(ctx, exc.code, exc.message, exc.payload)
            if as_json and result is not None:
                click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))

        return wrapper

    return decorate


def _fail(ctx: click.Context, code: int, message: str, payload: Any) -> None:
    if ctx.obj.get("json") and payload is not None:
        click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))
    if message:
        click.echo(f"error: {message}", err=True)
    ctx.exit(code)


def say(ctx: click.Context, text: str) -> None:
    """Human output; with --json it goes to stderr so stdout stays one JSON document."""
    click.echo(text, err=bool(ctx.obj.get("json")))


def table(ctx: click.Context, rows: List[List[Any]], header: List[str]) -> None:
    cells = [header] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        say(ctx, "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _progress(ctx: click.Context, total: int, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr,
                disable=True if ctx.obj.get("json") else None, leave=False)


@click.group()
@click.option("--url", envvar="MODELYARD_URL", help="Server URL (or MODELYARD_URL, or `modelyard login`).")
@click.option("--token", envvar="MODELYARD_TOKEN", help="API token (or MODELYARD_TOKEN, or `modelyard login`).")
@click.option("--retries", default=5, show_default=True, help="Retries after connection errors and 5xx.")
@click.option("--backoff", default=1.0, show_default=True, help="First retry delay in seconds (doubles).")
@click.version_option(package_name="modelyard-client")
@click.pass_context
def cli(ctx: click.Context, url: Optional[str], token: Optional[str], retries: int, backoff: float) -> None:
    """Modelyard from a shell or a pipeline. Exit codes: 0 ok, 1 error, 2 usage, 3 gates failed,
    4 rejected, 5 timed out, 6 job failed, 7 authentication/permission."""
    ctx.ensure_object(dict)
    ctx.obj.update(url=url, token=token, retries=retries, backoff=backoff)


# --- login -----------------------------------------------------------------------------------

@command(cli, "login")
@click.option("--username", help="Log in with a password and create a scoped token for this machine.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--token-stdin", is_flag=True, help="Store a token read from stdin (e.g. a CI secret).")
@click.option("--scope", "scopes", multiple=True, help="Scopes of the created token (default: all but approve).")
@click.option("--days", default=90, show_default=True, help="Expiry of the created token.")
def login(ctx: click.Context, username: Optional[str], password_stdin: bool, token_stdin: bool,
          scopes: List[str], days: int) -> dict:
    """Save the server URL and a token to the config file (0600)."""
    url, _ = config.resolve(ctx.obj.get("url"))
    if token_stdin:
        token = sys.stdin.readline().strip()
    elif username:
        password = sys.stdin.readline().rstrip("\n") if password_stdin else click.prompt("Password", hide_input=True)
        anonymous = Client(url, "")
        legacy = anonymous.request("POST", "/api/v1/auth/token/",
                                   json_body={"username": username, "password": password}).json()["token"]
        session = Client(url, "")
        session.session.headers["Authorization"] = f"Token {legacy}"
        wanted = list(scopes) or ["registry:read", "registry:write", "optimize", "releases:read",
                                  "releases:request", "releases:promote"]
        import socket

        token = session.post("/api/v1/tokens/", {"name": f"cli-{socket.gethostname()}-{uuid.uuid4().hex[:6]}",
                                                 "scopes": wanted, "expires_in_days": days})["token"]
    else:
        raise click.UsageError("Give --username (password login) or --token-stdin.")
    Client(url, token).get("/api/v1/models/", page_size=1)  # fails with exit 7 if the token does not work
    path = config.save(url, token)
    say(ctx, f"Logged in to {url}; token saved in {path}")
    return {"url": url, "config": str(path)}


# --- push, pull, alias, ls -------------------------------------------------------------------

def _pairs(values: List[str], what: str) -> Dict[str, str]:
    out = {}
    for item in values:
        if "=" not in item:
            raise click.UsageError(f"{what} must look like key=value, got {item!r}.")
        key, _, value = item.partition("=")
        out[key.strip()] = value
    return out


@command(cli, "push")
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True)
@click.option("--tag", "tags", multiple=True, help="Repeatable.")
@click.option("--metadata", "metadata", multiple=True, help="key=value, repeatable (values parsed as JSON if they can be).")
@click.option("--parent", type=int)
@click.option("--description", default="")
@click.option("--dataset", "datasets", multiple=True, help="role=path (train, eval, calibration), repeatable.")
@click.option("--task", default="classification", show_default=True, help="Task of the model if push creates it.")
@click.option("--idempotency-key", help="Default: a new random key for this push (reused by its retries).")
def push(ctx: click.Context, artifact: Path, model: str, tags: List[str], metadata: List[str], parent: Optional[int],
         description: str, datasets: List[str], task: str, idempotency_key: Optional[str]) -> dict:
    """Upload ARTIFACT as a new version (streamed, with a progress bar); waits for inspection."""
    meta = {k: _maybe_json(v) for k, v in _pairs(metadata, "--metadata").items()}
    data_files = {role: Path(p) for role, p in _pairs(datasets, "--dataset").items()}
    for role, path in data_files.items():
        if not path.is_file():
            raise click.UsageError(f"--dataset {role}: {path} is not a file.")
    client = _client(ctx)
    key = idempotency_key or str(uuid.uuid4())
    client.ensure_model(model, task, key)
    bar = _progress(ctx, artifact.stat().st_size, f"push {artifact.name}")

    def progress(n: int) -> None:
        bar.update(n)

    def restart_bar(attempt: int, why: str, delay: float) -> None:
        click.echo(f"retrying in {delay:.0f}s after {why} (attempt {attempt})", err=True)
        bar.reset()

    client.on_retry = restart_bar
    try:
        version = client.push(model, artifact, tags=tags, metadata=meta, parent=parent, description=description,
                              key=key, progress=progress)
    finally:
        bar.close()
    for role, path in data_files.items():
        ds = client.upload_dataset(model, role, path, version=version["version"], key=key)
        version.setdefault("datasets", []).append(ds)
    say(ctx, f"{model} v{version['version']}  {version['format']}  sha256 {version['sha256'][:12]}…  "
             f"{version['size_bytes']} bytes" + (f"  (+{len(data_files)} dataset(s))" if data_files else ""))
    return version


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


@command(cli, "pull")
@click.option("--model", required=True)
@click.option("--version", "ref", required=True, help="A number or an alias.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="File to write (default: the server's file name).")
def pull(ctx: click.Context, model: str, ref: str, output: Optional[Path]) -> dict:
    """Download a version's artifact; the sha256 is checked against the server's."""
    client = _client(ctx)
    number = client.resolve_version(model, ref)
    info = client.get(f"/api/v1/models/{model}/versions/{number}/")
    dest = output or Path(info["filename"])
    bar = _progress(ctx, info["size_bytes"], f"pull {dest.name}")
    try:
        result = client.pull(model, number, dest, progress=bar.update)
    finally:
        bar.close()
    say(ctx, f"{dest}  {model} v{number}  sha256 {result['sha256']} verified")
    return result


@cli.group()
def alias() -> None:
    """Aliases (champion, staging, …)."""


@command(alias, "set")
@click.argument("model")
@click.argument("name")
@click.argument("version", type=int)
def alias_set(ctx: click.Context, model: str, name: str, version: int) -> dict:
    """Point alias NAME of MODEL at VERSION."""
    result = _client(ctx).request("PUT", f"/api/v1/models/{model}/aliases/{name}", json_body={"version": version}).json()
    say(ctx, f"{model}@{name} -> v{result['version']}")
    return result


@cli.group()
def models() -> None:
    """Registered models."""


@command(models, "ls")
@click.option("--tag")
def models_ls(ctx: click.Context, tag: Optional[str]) -> list:
    rows = _client(ctx).list_all("/api/v1/models/", tag=tag, page_size=500)
    table(ctx, [[m["name"], m.get("task"), m.get("latest_version"), ",".join(m.get("tags", []))] for m in rows],
          ["NAME", "TASK", "LATEST", "TAGS"])
    return rows


@cli.group()
def versions() -> None:
    """Versions of a model."""


@command(versions, "ls")
@click.argument("model")
@click.option("--tag")
@click.option("--status")
def versions_ls(ctx: click.Context, model: str, tag: Optional[str], status: Optional[str]) -> list:
    rows = _client(ctx).list_all(f"/api/v1/models/{model}/versions/", tag=tag, status=status, page_size=500)
    table(ctx, [[v["version"], v["format"], v.get("status"), v["sha256"][:12], v["size_bytes"], v.get("parent"),
                 ",".join(v.get("aliases", []))] for v in rows],
          ["VERSION", "FORMAT", "STATUS", "SHA256", "BYTES", "PARENT", "ALIASES"])
    return rows


@cli.group()
def releases() -> None:
    """Releases."""


@command(releases, "ls")
@click.option("--model")
@click.option("--state")
@click.option("--environment")
def releases_ls(ctx: click.Context, model: Optional[str], state: Optional[str], environment: Optional[str]) -> list:
    rows = _client(ctx).list_all("/api/v1/releases/", model=model, state=state, environment=environment,
                                 page_size=500)
    table(ctx, [[r["id"], r["model"], r["version"], r["environment"], r["state"], r["requester"]] for r in rows],
          ["ID", "MODEL", "VERSION", "ENVIRONMENT", "STATE", "REQUESTER"])
    return rows


# --- optimize --------------------------------------------------------------------------------

def _recipe(recipe: str, max_drop: Optional[float], objective: Optional[str], params: List[str]) -> dict:
    if recipe.startswith("{"):
        return json.loads(recipe)
    body: Dict[str, Any] = {"technique": recipe}
    extra = {k: _maybe_json(v) for k, v in _pairs(params, "--param").items()}
    if recipe == "auto":
        extra.setdefault("max_accuracy_drop", max_drop if max_drop is not None else 0.01)
        if objective:
            extra["objective"] = objective
    elif max_drop is not None:
        raise click.UsageError("--max-accuracy-drop is for --recipe auto.")
    if extra:
        body["params"] = extra
    return body


@command(cli, "optimize")
@click.option("--model", required=True)
@click.option("--version", "version", required=True, help="A number or an alias.")
@click.option("--recipe", required=True, help="prune_int8, auto, a technique (ptq_int8, prune, …) or a JSON recipe.")
@click.option("--max-accuracy-drop", type=float, help="auto: the accuracy budget (absolute, e.g. 0.01).")
@click.option("--objective", type=click.Choice(["gzipped_size", "size", "latency"]), help="auto: what to minimise.")
@click.option("--param", "params", multiple=True, help="key=value recipe parameter, repeatable.")
@click.option("--wait/--no-wait", default=False, help="Follow the job to its end (exit 6 if it fails).")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait (exit 5 after).")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between polls.")
def optimize(ctx: click.Context, model: str, version: str, recipe: str, max_accuracy_drop: Optional[float],
             objective: Optional[str], params: List[str], wait: bool, timeout: float, interval: float) -> dict:
    """Start an optimization job; with --wait follow its stage and print the variant's metrics."""
    client = _client(ctx)
    number = client.resolve_version(model, version)
    body = {"model": model, "version": number, "recipe": _recipe(recipe, max_accuracy_drop, objective, params)}
    job = client.post("/api/v1/optimization-jobs/", body, idempotency_key=str(uuid.uuid4()))
    say(ctx, f"job {job['id']} {job['status']}: {json.dumps(job['recipe'])}")
    if not wait:
        return job
    seen: Dict[str, Any] = {}

    def show(j: dict) -> None:
        line = f"[{j['status']}] {j.get('progress', 0):5.1f}%  {j.get('stage', '')}  {j.get('message', '')}".rstrip()
        if seen.get("line") != line:
            seen["line"] = line
            say(ctx, line)

    job = client.wait(f"/api/v1/optimization-jobs/{job['id']}/", lambda j: j["status"] in FINISHED_JOB,
                      timeout=timeout, interval=interval, on_poll=show)
    if job is None:
        raise Exit(TIMED_OUT, f"the job did not finish within {timeout:.0f}s", {"error": {"code": "timed_out"}})
    if job["status"] != "succeeded":
        raise Exit(JOB_FAILED, f"job {job['id']} {job['status']}: {job.get('error') or job.get('message')}",
                   {"job": job})
    comparison = client.get(f"/api/v1/models/{model}/versions/{number}/variants/")
    variant = next((v for v in comparison["variants"] if v["version"] == job["variant"]), None)
    _metrics_table(ctx, comparison["parent"], variant)
    say(ctx, f"variant: {model} v{job['variant']}")
    return {"job": job, "variant": variant, "parent": comparison["parent"]}


FINISHED_JOB = ("succeeded", "failed", "cancelled")


def _metrics_table(ctx: click.Context, parent: dict, variant: Optional[dict]) -> None:
    before = (parent.get("metrics") or [{}])[0].get("metrics", {}) if parent.get("metrics") else {}
    after = ((variant or {}).get("metrics") or [{}])[0].get("metrics", {}) if variant and variant.get("metrics") else {}
    keys = sorted(set(before) | set(after))
    table(ctx, [[k, _fmt(before.get(k)), _fmt(after.get(k))] for k in keys],
          ["METRIC", f"v{parent['version']}", f"v{variant['version']}" if variant else "variant"])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


# --- releases ----------------------------------------------------------------------------------

@cli.group()
def release() -> None:
    """Request, decide, promote and roll back releases."""


def _show_release(ctx: click.Context, r: dict) -> None:
    say(ctx, f"release {r['id']}: {r['model']} v{r['version']} -> {r['environment']}  [{r['state']}]")
    if r.get("gates"):
        table(ctx, [["pass" if g["passed"] else "FAIL", g["gate"], _fmt(g.get("value")), _fmt(g.get("threshold")),
                     g.get("message", "")] for g in r["gates"]], ["", "GATE", "VALUE", "THRESHOLD", "MESSAGE"])
    if r.get("failure"):
        say(ctx, f"failure: {r['failure']}")


TERMINAL = {"rejected", "failed", "cancelled", "superseded", "rolled_back"}
REACHED = {"approved": {"approved", "image_building", "image_ready", "promoting", "live", "canary"},
           "live": {"live"}, "canary": {"canary", "live"}, "image_ready": {"image_ready", "promoting", "live", "canary"},
           "rolled_back": {"rolled_back"}}


def _finish(ctx: click.Context, client: Client, r: dict, wait_for: Optional[str], timeout: float,
            interval: float) -> dict:
    """Print the release; wait for a state if asked; exit with the code that says how it ended."""
    _show_release(ctx, r)
    if r["state"] == "pending_approval" and r.get("gates_passed") is False and wait_for is None:
        raise Exit(GATES_FAILED, f"release {r['id']}: gates failed", {"release": r})
    if wait_for:
        seen = {"state": r["state"]}

        def show(x: dict) -> None:
            if x["state"] != seen["state"]:
                seen["state"] = x["state"]
                say(ctx, f"release {x['id']}: {x['state']}")

        done = lambda x: x["state"] in REACHED[wait_for] or x["state"] in TERMINAL  # noqa: E731
        final = client.wait(f"/api/v1/releases/{r['id']}/", done, timeout=timeout, interval=interval, on_poll=show)
        if final is None:
            raise Exit(TIMED_OUT, f"release {r['id']} did not reach {wait_for} within {timeout:.0f}s",
                       {"release": client.get(f"/api/v1/releases/{r['id']}/")})
        r = final
        if r["state"] == "rejected":
            comment = next((a["comment"] for a in r.get("approvals", []) if a.get("decision") == "reject"), "")
            raise Exit(REJECTED, f"release {r['id']} was rejected: {comment}", {"release": r})
        if r["state"] == "failed":
            raise Exit(JOB_FAILED, f"release {r['id']} failed: {r.get('failure')}", {"release": r})
        if r["state"] not in REACHED[wait_for]:
            raise Exit(ERROR, f"release {r['id']} is {r['state']}", {"release": r})
    return r


def _wait_options(fn: Callable) -> Callable:
    fn = click.option("--interval", default=3.0, show_default=True, help="Seconds between polls.")(fn)
    fn = click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait (exit 5 after).")(fn)
    return click.option("--wait-for", type=click.Choice(sorted(REACHED)), help="Wait until the release gets there.")(fn)


@command(release, "request")
@click.option("--model", required=True)
@click.option("--version", "version", required=True, help="A number or an alias.")
@click.option("--environment", required=True)
@click.option("--notes", default="")
@click.option("--submit/--no-submit", default=True, show_default=True, help="Evaluate gates and ask for approval.")
@_wait_options
def release_request(ctx: click.Context, model: str, version: str, environment: str, notes: str, submit: bool,
                    wait_for: Optional[str], timeout: float, interval: float) -> dict:
    """Request a release (and submit it: gates, then approval). Exit 3 if gates fail."""
    client = _client(ctx)
    number = client.resolve_version(model, version)
    r = client.post("/api/v1/releases/", {"model": model, "version": number, "environment": environment,
                                          "notes": notes}, idempotency_key=str(uuid.uuid4()))
    if submit:
        r = client.post(f"/api/v1/releases/{r['id']}/submit/")
    return _finish(ctx, client, r, wait_for, timeout, interval)


def _action(name: str, doc: str, *options: Callable, body: Callable[..., dict] = lambda **kw: {}) -> None:
    def run(ctx: click.Context, release_id: int, wait_for: Optional[str], timeout: float, interval: float,
            **kwargs: Any) -> dict:
        client = _client(ctx)
        r = client.post(f"/api/v1/releases/{release_id}/{name}/", body(**kwargs))
        return _finish(ctx, client, r, wait_for, timeout, interval)

    run.__doc__ = doc
    run.__name__ = f"release_{name}"
    for option in reversed(options):
        run = option(run)
    run = _wait_options(click.argument("release_id", type=int)(run))
    command(release, name)(run)


_comment = click.option("--comment", required=True)
_action("submit", "Evaluate the gates and ask for approval. Exit 3 if gates fail.")
_action("approve", "Approve (needs releases:approve; not the requester in production).", _comment,
        click.option("--override-reason", default="", help="Needed to approve despite failed gates."),
        body=lambda comment, override_reason: {"comment": comment, "override_reason": override_reason})
_action("reject", "Reject with a comment.", _comment, body=lambda comment: {"comment": comment})
_action("promote", "Promote an approved release to its endpoints (a task; use --wait-for live).",
        click.option("--endpoint", default=""), click.option("--canary", is_flag=True),
        body=lambda endpoint, canary: {"endpoint": endpoint, "canary": canary})
_action("complete", "Complete a canary (move stable to it).")
_action("rollback", "Roll back to the version that served before (a task when it must be staged again: "
                    "--wait-for rolled_back).", click.option("--comment", default=""),
        body=lambda comment: {"comment": comment})


@command(release, "show")
@click.argument("release_id", type=int)
@_wait_options
def release_show(ctx: click.Context, release_id: int, wait_for: Optional[str], timeout: float, interval: float) -> dict:
    """Show a release with its gates; with --wait-for, wait like the other commands."""
    client = _client(ctx)
    return _finish(ctx, client, client.get(f"/api/v1/releases/{release_id}/"), wait_for, timeout, interval)


def main() -> None:
    cli(obj={}, prog_name="modelyard")


if __name__ == "__main__":
    main()
