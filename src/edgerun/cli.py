"""The ``edgerun`` command line (typer + rich).

Errors print one line and exit non-zero; no traceback reaches the user.
Commands that talk to a cluster find it, and the key they call it with,
through --control/--key, the EDGERUN_CONTROL/EDGERUN_KEY variables, a
profile (``edgerun login`` writes ``$EDGERUN_HOME/profiles.toml``; pick one
with --profile or EDGERUN_PROFILE), or the state file ``edgerun up`` writes
(``$EDGERUN_HOME/cluster.json``, by default ``~/.edgerun``), whose admin token
is the local cluster's first key.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from edgerun.build import BuildError, build_bundle, function_config
from edgerun.client import Client, EdgerunError, invoke
from edgerun.config import default_topology, load_node_config, load_topology
from edgerun.errors import ApiError
from edgerun.files import write_atomic
from edgerun.logconfig import configure as configure_logging

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="edgerun: run functions at the edge."
)
out = Console()
err = Console(stderr=True)
_F = TypeVar("_F", bound=Callable[..., Any])

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _home() -> Path:
    return Path(os.environ.get("EDGERUN_HOME", Path.home() / ".edgerun"))


def _fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr; exit ``code`` (2: the input was wrong, as for usage errors)."""
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except EdgerunError as exc:
        _fail(f"{exc.message} ({exc.type}, HTTP {exc.status})" if exc.status else exc.message)
    except (ApiError, BuildError, ValueError, OSError) as exc:
        _fail(str(getattr(exc, "message", exc)))


def _state() -> dict[str, Any]:
    path = _home() / "cluster.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except ValueError:
        return {}


ControlOpt = Annotated[
    str, typer.Option("--control", envvar="EDGERUN_CONTROL", help="Control plane URL.")
]
TokenOpt = Annotated[
    str,
    typer.Option(
        "--key",
        "--token",
        envvar=["EDGERUN_KEY", "EDGERUN_TOKEN"],
        help="Secret of the API key to call with.",
    ),
]
_profile_name = "default"


@app.callback()
def _options(
    profile: Annotated[
        str, typer.Option(envvar="EDGERUN_PROFILE", help="Profile in profiles.toml to use.")
    ] = "default",
) -> None:
    global _profile_name
    _profile_name = profile


def _profiles_path() -> Path:
    return _home() / "profiles.toml"


def _profile() -> dict[str, str]:
    path = _profiles_path()
    if not path.exists():
        return {}
    import tomllib

    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        _fail(f"cannot read {path}: {exc}")
    chosen = profiles.get(_profile_name, {})
    return {k: str(v) for k, v in chosen.items()} if isinstance(chosen, dict) else {}


def _client(control: str, token: str) -> Client:
    control = control or _profile().get("control", "") or _state().get("control_url", "")
    if not control:
        _fail(
            "no control plane: pass --control, set EDGERUN_CONTROL, "
            "`edgerun login`, or run `edgerun up`"
        )
    return Client(control, _token(token))


def _token(token: str) -> str:
    """The key: given, else the profile's, else the local cluster's admin token."""
    if token:
        return token
    profile_key = _profile().get("key", "")
    if profile_key:
        return profile_key
    token_file = _state().get("token_file")
    if not token_file:
        return ""
    try:
        return Path(token_file).read_text().strip()
    except OSError:
        return ""


def _first_pop(pop: str) -> str:
    if pop:
        return pop
    profile_pop = _profile().get("pop")
    if profile_pop:
        return profile_pop
    nodes = _state().get("nodes", [])
    pops = [n["url"] for n in nodes if n["role"] == "pop"]
    if not pops:
        _fail("no POP known: pass --pop URL, `edgerun login --pop`, or run `edgerun up`")
    return str(pops[0])


# --- running nodes -------------------------------------------------------------


@app.command()
def node(
    role: Annotated[str, typer.Option(help="control, region or pop")],
    config: Annotated[Path, typer.Option(help="Node config (TOML).")],
) -> None:
    """Run one node (one per machine in a real deployment)."""
    from edgerun.server import Server

    with _errors():
        cfg = load_node_config(config)
        if cfg.role != role:
            _fail(f"--role {role} does not match role = {cfg.role!r} in {config}")
        configure_logging(cfg.name, cfg.log_format, cfg.log_level)
        Server(cfg).run()


@app.command()
def up(
    config: Annotated[Path | None, typer.Option(help="Topology TOML (default: built in).")] = None,
    demo: Annotated[bool, typer.Option(help="Deploy the examples once the cluster is up.")] = False,
    data_dir: Annotated[Path | None, typer.Option(help="Where nodes keep their data.")] = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart/--no-restart",
            help="Restart a node that exits, with backoff (--no-restart: keep it down).",
        ),
    ] = True,
    log_format: Annotated[
        str, typer.Option(help="Node logs (NODE/node.log): json lines, or text for people.")
    ] = "text",
) -> None:
    """Start a local topology (control plane, regions, POPs) until Ctrl-C.

    A node that exits is reported and restarted with backoff while the others
    keep serving; `edgerun stop NODE` / `edgerun start NODE` from another shell
    stop and start one by hand."""
    from edgerun.cluster import LocalCluster
    from edgerun.watcher import SHUTDOWN_GRACE_S, Watcher

    if log_format not in ("json", "text"):
        _fail("--log-format must be json or text")
    with _errors():
        topology = load_topology(config) if config else default_topology()
        cluster = LocalCluster(
            topology,
            data_dir or _home() / "cluster",
            node_settings={"shutdown_grace_s": SHUTDOWN_GRACE_S, "log_format": log_format},
            own_process_groups=True,  # a Ctrl-C reaches up, which stops every node at once
        )
        stop = False

        def _stop(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGHUP, _stop)  # its terminal closed: the nodes do not hear it
        watcher: Watcher | None = None
        try:
            with out.status("starting nodes..."):
                cluster.start()
            watcher = Watcher(cluster, out.print, restart=restart)
            try:
                cluster.up_socket = watcher.serve()
            except RuntimeError as exc:
                _fail(str(exc))
            cluster.write_state(_home() / "cluster.json")
            table = Table(title="edgerun is up")
            for col in ("node", "role", "url"):
                table.add_column(col)
            for n in cluster.nodes.values():
                table.add_row(n.config.name, n.config.role, n.url)
            out.print(table)
            out.print(f"admin token: {cluster.token_file}")
            if demo:
                with _client(cluster.control_url, cluster.token) as client:
                    for folder in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
                        record = _deploy(client, folder, {})
                        out.print(f"deployed [bold]{record[0]}[/bold] {record[1][:12]}")
            out.print("Ctrl-C to stop.")
            # From here a Ctrl-C only says "stop": the watcher must not be cut off
            # halfway through starting a node (it would be left running).
            signal.signal(signal.SIGINT, _stop)
            watcher.run(lambda: stop)
        except KeyboardInterrupt:
            pass
        finally:
            if watcher is not None:
                watcher.close()
            with out.status("stopping..."):
                cluster.stop()
        out.print("stopped.")


def _up_request(op: str, node: str) -> str:
    """Ask the running `edgerun up` (its socket is in cluster.json) to stop or start a node."""
    from edgerun.watcher import request

    path = _state().get("up_socket")
    if not path:
        _fail(f"no `edgerun up` is running here (no up_socket in {_home() / 'cluster.json'})")
    try:
        answer = request(Path(path), op, node)
    except (OSError, ValueError) as exc:
        _fail(f"cannot reach `edgerun up` at {path}: {exc}")
    if not answer.get("ok"):
        _fail(str(answer.get("error", "refused")))
    return str(answer.get("message", "done"))


@app.command("stop")
def stop_node(
    node: Annotated[str, typer.Argument(help="Node name (as `edgerun up` lists it).")],
) -> None:
    """Stop one node of the running `edgerun up`; it stays down until `edgerun start`."""
    out.print(_up_request("stop", node))


@app.command("start")
def start_node(
    node: Annotated[str, typer.Argument(help="Node name (as `edgerun up` lists it).")],
) -> None:
    """Start a node of the running `edgerun up` again and wait until it is healthy."""
    out.print(_up_request("start", node))


lab_app = typer.Typer(help="A multi-region test bed with emulated distance.")
app.add_typer(lab_app, name="lab")


class PlacementMode(StrEnum):
    """The POP placement policies (``NodeConfig.placement_mode``)."""

    edgerun = "edgerun"
    always_here = "always-here"
    always_forward = "always-forward"


@lab_app.command("up")
def lab_up(
    pops: Annotated[int, typer.Option(min=1, help="Number of POPs.")] = 2,
    regions: Annotated[int, typer.Option(min=1, help="Number of regions.")] = 2,
    client_pop_ms: Annotated[float, typer.Option(min=0, help="Client-POP round trip.")] = 5.0,
    pop_region_ms: Annotated[float, typer.Option(min=0, help="POP-region round trip.")] = 40.0,
    region_region_ms: Annotated[
        float, typer.Option(min=0, help="Region-region round trip (no such traffic yet).")
    ] = 60.0,
    pop_capacity_mb: Annotated[int, typer.Option(min=1, help="Memory budget of each POP.")] = 1024,
    placement_mode: Annotated[
        PlacementMode, typer.Option(help="The POPs' placement policy.")
    ] = PlacementMode.edgerun,
    demo: Annotated[bool, typer.Option(help="Deploy the examples.")] = False,
) -> None:
    """Start a lab: real nodes, links with delays (round trips in ms), until Ctrl-C."""
    from edgerun.lab import Lab, LabSpec

    with _errors():
        lab = Lab(
            LabSpec(
                pops=pops,
                regions=regions,
                client_pop_ms=client_pop_ms,
                pop_region_ms=pop_region_ms,
                region_region_ms=region_region_ms,
                pop_capacity_mb=pop_capacity_mb,
                placement_mode=placement_mode.value,
            ),
            _home() / "lab",
        )
        try:
            with out.status("starting the lab..."):
                lab.start()
            lab.cluster.write_state(_home() / "cluster.json")
            table = Table(title="edgerun lab")
            for col in ("link", "url", "one-way delay"):
                table.add_column(col)
            for name, link in lab.links.items():
                table.add_row(name, link.url, f"{link.delay_ms:g} ms")
            out.print(table)
            if demo:
                with _client(lab.cluster.control_url, lab.cluster.token) as client:
                    for folder in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
                        name, sha = _deploy(client, folder, {})
                        out.print(f"deployed [bold]{name}[/bold] {sha[:12]}")
            out.print(
                "clients: "
                + ", ".join(lab.client_url(p.config.name) for p in lab.cluster.by_role("pop"))
            )
            out.print("Ctrl-C to stop.")
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            lab.stop()
        out.print("stopped.")


@lab_app.command("replay")
def lab_replay(
    trace: Annotated[Path, typer.Argument(help="JSONL: one {t, pop, function, data?} a line.")],
    functions: Annotated[
        Path, typer.Option(help="Folder of function folders (each with edgerun.toml).")
    ],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object and nothing else on stdout.")
    ] = False,
    modes: Annotated[
        str, typer.Option(help="Comma-separated: edgerun, always-here, always-forward, ideal.")
    ] = "edgerun,always-here,always-forward,ideal",
    png: Annotated[
        Path | None, typer.Option(help="CDF of latencies (default: cdf.png beside the trace).")
    ] = None,
    warmup: Annotated[
        float | None, typer.Option(min=0, help="Seconds replayed but left out of the figures.")
    ] = None,
    speed: Annotated[float, typer.Option(min=0.01, help="Replay X times faster.")] = 1.0,
    limit_seconds: Annotated[
        float | None, typer.Option(min=0, help="Replay only the first N seconds of the trace.")
    ] = None,
    lab: Annotated[
        Path | None, typer.Option(help="Lab settings (default: lab.toml beside the trace).")
    ] = None,
    pops: Annotated[int | None, typer.Option(help="Overrides lab.toml.")] = None,
    regions: Annotated[int | None, typer.Option(help="Overrides lab.toml.")] = None,
    client_pop_ms: Annotated[float | None, typer.Option(help="Overrides lab.toml.")] = None,
    pop_region_ms: Annotated[float | None, typer.Option(help="Overrides lab.toml.")] = None,
    region_region_ms: Annotated[float | None, typer.Option(help="Overrides lab.toml.")] = None,
    pop_capacity_mb: Annotated[int | None, typer.Option(help="Overrides lab.toml.")] = None,
    region_capacity_mb: Annotated[int | None, typer.Option(help="Overrides lab.toml.")] = None,
    keep_data: Annotated[
        bool, typer.Option(help="Keep each lab's data folder (node logs) and say where.")
    ] = False,
) -> None:
    """Replay a trace on a fresh lab per placement mode and compare latencies."""
    from edgerun import replay as rp

    try:
        settings = rp.LabSettings()
        lab_file = lab or trace.parent / rp.LAB_TOML
        if lab is not None or lab_file.exists():
            try:
                text = lab_file.read_text()
            except OSError as exc:
                raise rp.ReplayError(f"cannot read {lab_file}: {exc.strerror}") from None
            settings = rp.parse_lab_toml(text, str(lab_file))
        settings = rp.merge_settings(
            settings,
            {
                "pops": pops,
                "regions": regions,
                "client_pop_ms": client_pop_ms,
                "pop_region_ms": pop_region_ms,
                "region_region_ms": region_region_ms,
                "pop_capacity_mb": pop_capacity_mb,
                "region_capacity_mb": region_capacity_mb,
                "warmup_s": warmup,
            },
        )
        chosen = rp.parse_modes(modes)
        requests = rp.limit(rp.read_trace(trace), limit_seconds)
        with err.status("building functions...") as status:
            fset = rp.load_functions(functions, status.update)
        rp.check_trace(requests, fset, settings.pops)
    except (rp.ReplayError, BuildError, ApiError) as exc:
        _fail(str(getattr(exc, "message", exc)), code=2)

    runs: list[rp.ModeRun] = []
    with _errors():
        for mode in chosen:
            with err.status(f"{mode}...") as status:
                run = rp.run_mode(
                    mode,
                    settings,
                    fset,
                    requests,
                    speed=speed,
                    keep_data=keep_data,
                    progress=status.update,
                )
            runs.append(run)
            if run.data_dir is not None:
                err.print(f"{mode}: lab data kept in {run.data_dir}", highlight=False)
    warmup_s = settings.warmup_s
    png_path = png or trace.parent / "cdf.png"
    latencies: dict[str, list[float]] = {
        r.mode: [o.latency_ms for o in r.outcomes if o.ok and o.t >= warmup_s] for r in runs
    }
    title = f"{trace.parent.name}: {len(requests)} requests, {len(fset.functions)} functions"
    try:
        wrote = rp.write_cdf_png(latencies, png_path, title)
    except OSError as exc:
        err.print(f"cannot write {png_path}: {exc.strerror}", highlight=False)
        wrote = False
    else:
        if not wrote:
            err.print(
                "matplotlib is missing, so no CDF PNG: pip install 'edgerun[bench]' "
                "(or .venv/bin/pip install matplotlib)",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    result = rp.report(
        runs,
        settings,
        {
            "trace": str(trace),
            "functions": len(fset.functions),
            "replayed": len(requests),
            "speed": speed,
            "limit_seconds": limit_seconds,
            "png": str(png_path) if wrote else None,
        },
    )
    if json_out:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    out.print(rp.summary_table(result, f"{trace}"))
    s = settings
    out.print(
        f"lab: {s.pops} POPs, {s.regions} regions, client-POP {s.client_pop_ms:g} ms, "
        f"POP-region {s.pop_region_ms:g} ms round trips, speed x{speed:g}",
        highlight=False,
    )
    if wrote:
        out.print(f"CDF: {png_path}", highlight=False)


# --- functions ---------------------------------------------------------------


def _deploy(client: Client, folder: Path, overrides: dict[str, Any]) -> tuple[str, str]:
    name, config = function_config(folder, overrides)
    with out.status(f"building {folder}...") as status:
        bundle = build_bundle(folder, lambda line: status.update(f"pip: {line[:80]}"))
    record = client.deploy(name, bundle, config)
    return name, record.aliases["latest"]


@app.command()
def deploy(
    folder: Path,
    name: Annotated[str | None, typer.Option(help="Function name (default: folder name).")] = None,
    handler: Annotated[str | None, typer.Option(help="module.function")] = None,
    memory: Annotated[int | None, typer.Option(help="Memory in MB.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Timeout in seconds.")] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    placement: Annotated[str | None, typer.Option(help="auto, edge or region")] = None,
    auth: Annotated[
        str | None, typer.Option(help="HTTP trigger: 'public' (anyone) or 'key' (invoke scope).")
    ] = None,
    control: ControlOpt = "",
    token: TokenOpt = "",
) -> None:
    """Build a bundle from FOLDER (vendoring requirements.txt) and deploy it."""
    with _errors():
        env_vars: dict[str, str] | None = None
        if env:
            env_vars = {}
            for item in env:
                key, sep, value = item.partition("=")
                if not sep:
                    _fail(f"--env {item!r} must be KEY=VALUE")
                env_vars[key] = value
        overrides = {
            "name": name,
            "handler": handler,
            "memory_mb": memory,
            "timeout_s": timeout,
            "env": env_vars,
            "placement": placement,
            "auth": auth,
        }
        with _client(control, token) as client:
            fn, sha = _deploy(client, folder, overrides)
        out.print(f"deployed [bold]{fn}[/bold] version {sha}")


@app.command(name="invoke")
def invoke_cmd(
    name: Annotated[str, typer.Argument(help="NAME or NAME@ALIAS")],
    data: Annotated[str, typer.Option(help="JSON payload.")] = "{}",
    pop: Annotated[str, typer.Option(help="POP (or region) URL.")] = "",
    logs: Annotated[bool, typer.Option(help="Also print the invocation's output.")] = False,
    is_async: Annotated[
        bool, typer.Option("--async", help="Queue it to run later (retries, dead letters).")
    ] = False,
    token: TokenOpt = "",
) -> None:
    """Invoke a function through a POP and say where it ran."""
    with _errors():
        try:
            payload = json.loads(data)
        except ValueError as exc:
            _fail(f"--data is not valid JSON: {exc}")
        result = invoke(_first_pop(pop), name, payload, key=_token(token), event=is_async)
        if is_async and result.status == 202:
            queued = json.loads(result.content)
            out.print(f"queued event {queued['event_id']} at {result.node}", highlight=False)
            return
        body = result.content.decode(errors="replace")
        where = f"{result.node} {result.placement} ({result.reason}) {result.elapsed_ms:.1f} ms"
        if result.status >= 400:
            err.print(body, highlight=False)
            _fail(f"invocation failed with HTTP {result.status} at {where}")
        sys.stdout.write(body + ("" if body.endswith("\n") else "\n"))
        err.print(f"[dim]ran at {where}[/dim]", highlight=False)
        if logs:
            _print_logs(_first_pop(pop), result.headers.get("x-edgerun-request-id", ""), token)


def _print_logs(node_url: str, request_id: str, token: str) -> None:
    import httpx

    token = _token(token)
    resp = httpx.get(
        f"{node_url}/v1/logs",
        params={"request_id": request_id},
        headers={"authorization": f"Bearer {token}"},
        timeout=5,
    )
    entries = resp.json().get("logs", []) if resp.status_code == 200 else []
    entries = [e for e in entries if e.get("output")]
    if not entries:
        err.print(f"[dim]no output captured for request {request_id}[/dim]")
    for entry in entries:
        err.print(f"[dim]--- output of {request_id} on {entry['node']} ---[/dim]")
        sys.stderr.write(entry["output"])


@app.command()
def doctor() -> None:
    """Show which isolation layers sandboxes get on this machine."""
    from edgerun.sandbox.isolation import detect

    table = Table(title="edgerun isolation on this machine")
    for col in ("layer", "active", "detail"):
        table.add_column(col)
    layers = detect()
    for layer in layers:
        mark = "[green]yes[/green]" if layer.active else "[red]no[/red]"
        table.add_row(layer.name, mark, layer.detail)
    out.print(table)
    active = sum(layer.active for layer in layers)
    out.print(f"{active}/{len(layers)} layers active")


@app.command(name="ls")
def ls(control: ControlOpt = "", token: TokenOpt = "") -> None:
    """List functions."""
    with _errors(), _client(control, token) as client:
        table = Table()
        for col in ("name", "latest", "versions", "aliases", "memory", "placement"):
            table.add_column(col)
        for fn in client.list_functions():
            table.add_row(
                fn.name,
                fn.aliases.get("latest", "")[:12],
                str(len(fn.versions)),
                ", ".join(a for a in fn.aliases if a != "latest"),
                f"{fn.config.memory_mb} MB",
                fn.config.placement,
            )
        out.print(table)


@app.command()
def schedules(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    control: ControlOpt = "",
    token: TokenOpt = "",
) -> None:
    """List scheduled functions and their next fire times (UTC)."""
    with _errors(), _client(control, token) as client:
        rows = list(client.schedules())
    if json_out:
        sys.stdout.write(json.dumps({"schedules": rows}) + "\n")
        return
    table = Table()
    for col in ("name", "schedule", "next fire (UTC)", "in", "last fired (UTC)"):
        table.add_column(col)
    for row in rows:
        wait = row.get("next_fire_in_s")
        table.add_row(
            row["name"],
            row["schedule"],
            row.get("next_fire") or "never",
            "" if wait is None else f"{max(0.0, wait):.0f} s",
            row.get("last_fired") or "",
        )
    out.print(table)


@app.command()
def versions(name: str, control: ControlOpt = "", token: TokenOpt = "") -> None:
    """List a function's versions, and which are retained and why.

    A version is kept while an alias points at it or it is among the newest N
    (the control plane's ``retain_versions``); the others are "collectable":
    the next collection removes them and their code from every node."""
    with _errors(), _client(control, token) as client:
        table = Table()
        for col in ("version", "handler", "size", "created", "aliases", "retained"):
            table.add_column(col)
        for v in client.versions(name):
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["created_at"]))
            why = v.get("retained")
            retained = ", ".join(why) if why else ("collectable" if why is not None else "?")
            table.add_row(
                v["sha256"],
                v["handler"],
                str(v["size"]),
                created,
                ", ".join(v["aliases"]),
                retained,
            )
        out.print(table)


@app.command()
def alias(
    name: str, alias: str, version: str, control: ControlOpt = "", token: TokenOpt = ""
) -> None:
    """Point ALIAS at VERSION (a hash or unique prefix); rollback = move an alias."""
    with _errors(), _client(control, token) as client:
        record = client.set_alias(name, alias, version)
        out.print(f"{name}@{alias} -> {record.aliases[alias]}")


@app.command()
def rm(name: str, control: ControlOpt = "", token: TokenOpt = "") -> None:
    """Delete a function."""
    with _errors(), _client(control, token) as client:
        client.delete(name)
        out.print(f"deleted {name}")


@app.command()
def status(token: TokenOpt = "") -> None:
    """Show the local topology: health and what each node holds."""
    import httpx

    nodes = _state().get("nodes", [])
    if not nodes:
        _fail("no cluster known: run `edgerun up` first")
    token = _token(token)
    table = Table()
    for col in ("node", "role", "url", "health", "revision", "pool", "warm", "placements"):
        table.add_column(col)
    with httpx.Client(timeout=2.0, headers={"authorization": f"Bearer {token}"}) as http:
        for n in nodes:
            try:
                path = "/v1/health" if n["role"] == "control" else "/v1/status?limit=1"
                resp = http.get(f"{n['url']}{path}")
                body = resp.json()
            except (httpx.HTTPError, ValueError):
                table.add_row(n["name"], n["role"], n["url"], "[red]down[/red]", "", "", "", "")
                continue
            if resp.status_code in (401, 403):
                refused = f"[red]key refused (HTTP {resp.status_code})[/red]"
                table.add_row(n["name"], n["role"], n["url"], refused, "", "", "", "")
                continue
            pool = body.get("pool")
            table.add_row(
                n["name"],
                n["role"],
                n["url"],
                "[green]up[/green]",
                str(body.get("revision")),
                f"{pool['used_mb']}/{pool['capacity_mb']} MB, {pool['busy']} busy" if pool else "",
                str(len(body.get("warm_versions", []))) if pool else "",
                ", ".join(
                    f"{p['function']}:{p['placement']}({p['reason']})={p['count']}"
                    for p in body.get("placements", [])
                ),
            )
    out.print(table)


# --- tenants, keys, nodes ------------------------------------------------------

tenants_app = typer.Typer(no_args_is_help=True, help="Tenants (the cluster admin's).")
keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")
nodes_app = typer.Typer(help="The nodes: list them, join tokens, revoke credentials.")
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
app.add_typer(nodes_app, name="nodes")
secret_app = typer.Typer(no_args_is_help=True, help="Function secrets (values never shown).")
app.add_typer(secret_app, name="secret")


@secret_app.command("put")
def secret_put(name: str, key: str, control: ControlOpt = "", token: TokenOpt = "") -> None:
    """Set secret KEY of function NAME to the value read from stdin."""
    with _errors():
        value = sys.stdin.read()
        if value.endswith("\n"):
            value = value[:-1]  # `echo value |` and heredocs add one
        with _client(control, token) as client:
            client.put_secret(name, key, value)
        out.print(f"set secret {key} of {name}")


@secret_app.command("bulk")
def secret_bulk(name: str, env_file: Path, control: ControlOpt = "", token: TokenOpt = "") -> None:
    """Set every KEY=VALUE of a .env file as secrets of function NAME."""
    from edgerun.control.secrets import parse_dotenv

    with _errors():
        values = parse_dotenv(env_file.read_text())
        with _client(control, token) as client:
            client.put_secrets(name, values)
        out.print(f"set {len(values)} secret(s) of {name}: {', '.join(sorted(values))}")


@secret_app.command("ls")
def secret_ls(name: str, control: ControlOpt = "", token: TokenOpt = "") -> None:
    """List the names of a function's secrets."""
    with _errors(), _client(control, token) as client:
        for key in client.secret_names(name):
            out.print(key, highlight=False)


@secret_app.command("rm")
def secret_rm(name: str, key: str, control: ControlOpt = "", token: TokenOpt = "") -> None:
    """Remove secret KEY of function NAME."""
    with _errors(), _client(control, token) as client:
        client.delete_secret(name, key)
        out.print(f"removed secret {key} of {name}")


@app.command()
def login(
    control: Annotated[str, typer.Option(help="Control plane URL.")],
    key: Annotated[str, typer.Option(help="Key secret (prompted when not given).")] = "",
    pop: Annotated[str, typer.Option(help="A POP to invoke through.")] = "",
) -> None:
    """Save a control plane, a key and a POP as a profile (--profile, default 'default')."""
    import tomllib

    with _errors():
        if not key:
            key = typer.prompt("key secret", hide_input=True)
        path = _profiles_path()
        profiles: dict[str, Any] = {}
        if path.exists():
            profiles = tomllib.loads(path.read_text())
        profiles[_profile_name] = {"control": control, "key": key, **({"pop": pop} if pop else {})}
        lines = []
        for name, values in profiles.items():
            lines.append(f"[{json.dumps(name)}]")
            lines += [f"{k} = {json.dumps(str(v))}" for k, v in values.items()]
            lines.append("")
        write_atomic(path, "\n".join(lines).encode())  # owner-only: it holds a key
        out.print(f"saved profile [bold]{_profile_name}[/bold] in {path}")


@tenants_app.command("create")
def tenants_create(name: str, control: ControlOpt = "", token: TokenOpt = "") -> None:
    """Create a tenant; its functions are named NAME.FUNCTION."""
    with _errors(), _client(control, token) as client:
        client.create_tenant(name)
        out.print(f"created tenant [bold]{name}[/bold]")


@tenants_app.command("ls")
def tenants_ls(control: ControlOpt = "", token: TokenOpt = "") -> None:
    """List tenants."""
    with _errors(), _client(control, token) as client:
        table = Table()
        for col in ("tenant", "keys", "created"):
            table.add_column(col)
        for t in client.tenants():
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t["created_at"]))
            table.add_row(t["name"], str(t["keys"]), created)
        out.print(table)


@tenants_app.command("rm")
def tenants_rm(name: str, control: ControlOpt = "", token: TokenOpt = "") -> None:
    """Remove a tenant with no functions left, revoking its keys."""
    with _errors(), _client(control, token) as client:
        result = client.delete_tenant(name)
        out.print(f"removed tenant {name}; revoked {len(result['revoked'])} key(s)")


@keys_app.command("create")
def keys_create(
    scope: Annotated[
        list[str],
        typer.Option(help="admin, deploy, invoke or read, optionally :PATTERN; repeatable."),
    ],
    tenant: Annotated[str, typer.Option(help="Tenant (default: the caller's).")] = "",
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    rate: Annotated[float | None, typer.Option(help="Requests per second per node.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Concurrent calls per node.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    control: ControlOpt = "",
    token: TokenOpt = "",
) -> None:
    """Create a key and print its id and secret (the secret is shown only once)."""
    with _errors(), _client(control, token) as client:
        key = client.create_key(
            scope, tenant=tenant, name=name, rate_per_s=rate, max_concurrency=concurrency
        )
    if json_out:
        sys.stdout.write(json.dumps(key) + "\n")
        return
    out.print(f"key id:  {key['id']}", highlight=False)
    out.print(f"secret:  {key['secret']}", highlight=False)
    out.print(f"tenant:  {key['tenant']}  scopes: {', '.join(key['scopes'])}", highlight=False)
    err.print("[dim]the secret is not stored: keep it now[/dim]")


@keys_app.command("ls")
def keys_ls(
    tenant: Annotated[str, typer.Option(help="Tenant (default: the caller's).")] = "",
    control: ControlOpt = "",
    token: TokenOpt = "",
) -> None:
    """List keys (never their secrets)."""
    with _errors(), _client(control, token) as client:
        table = Table()
        for col in ("id", "tenant", "scopes", "name", "limits", "state"):
            table.add_column(col)
        for k in client.keys(tenant):
            limits = ", ".join(
                f"{label} {k[field]:g}"
                for label, field in (("rate", "rate_per_s"), ("concurrency", "max_concurrency"))
                if k.get(field) is not None
            )
            state = "[red]revoked[/red]" if k["revoked"] else "live"
            table.add_row(k["id"], k["tenant"], ", ".join(k["scopes"]), k["name"], limits, state)
        out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, control: ControlOpt = "", token: TokenOpt = "") -> None:
    """Revoke a key: every node refuses it within moments."""
    with _errors(), _client(control, token) as client:
        client.revoke_key(key_id)
        out.print(f"revoked {key_id}")


@nodes_app.command("join-token")
def nodes_join_token(
    role: Annotated[str, typer.Option(help="pop or region")],
    name: Annotated[str, typer.Option(help="The node's name.")],
    ttl: Annotated[float, typer.Option(help="Seconds the token stays valid.")] = 3600.0,
    control: ControlOpt = "",
    token: TokenOpt = "",
) -> None:
    """A single-use token a new node trades for its own credential (join_token_file)."""
    with _errors(), _client(control, token) as client:
        result = client.join_token(role, name, ttl)
    sys.stdout.write(result["token"] + "\n")


@nodes_app.callback(invoke_without_command=True)
def _nodes_default(ctx: typer.Context, control: ControlOpt = "", token: TokenOpt = "") -> None:
    """`edgerun nodes` alone lists them."""
    if ctx.invoked_subcommand is None:
        nodes_ls(control, token)


_STATE_STYLE = {"up": "[green]up[/green]", "down": "[red]down[/red]", "unknown": "unknown"}


@nodes_app.command("ls")
def nodes_ls(control: ControlOpt = "", token: TokenOpt = "") -> None:
    """List the nodes: where they are, whether they beat, their credentials."""
    with _errors(), _client(control, token) as client:
        nodes = client.nodes()
    table = Table()
    for col in ("node", "role", "url", "state", "last seen", "revision", "id", "credential"):
        table.add_column(col)
    for n in nodes:
        seen = "-" if n.get("last_seen_s") is None else f"{n['last_seen_s']:.1f}s ago"
        state = _STATE_STYLE.get(n["state"], n["state"])
        credential = "[red]revoked[/red]" if n.get("revoked") else "live"
        table.add_row(
            n["name"], n.get("role") or "-", n.get("url") or "-", state, seen,
            str(n.get("revision", "-")), n.get("id", "-"), credential,
        )  # fmt: skip
    out.print(table)


dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: events that failed for good.")
app.add_typer(dlq_app, name="dlq")


def _node_urls(control: str, token: str) -> list[str]:
    """Every region's and POP's URL the control plane knows (down ones too: what
    cannot be reached is said, node by node); the local cluster's if it knows none."""
    with _errors(), _client(control, token) as client:
        nodes = client.nodes()
    urls = [n["url"] for n in nodes if n.get("url") and not n.get("revoked")]
    urls = urls or [n["url"] for n in _state().get("nodes", []) if n.get("role") != "control"]
    if not urls:
        _fail("no node has told the control plane its URL yet")
    return urls


def _each_node(control: str, token: str, method: str, path: str, **kw: Any) -> list[dict[str, Any]]:
    """The same call on every node that is up (dead letters live where events were queued)."""
    import httpx

    answers = []
    auth = {"authorization": f"Bearer {_token(token)}"}
    with httpx.Client(headers=auth, timeout=10.0) as http:
        for url in _node_urls(control, token):
            try:
                resp = http.request(method, f"{url}{path}", **kw)
            except httpx.HTTPError as exc:
                err.print(f"[yellow]{url}: {exc}[/yellow]")
                continue
            if resp.status_code != 200:
                err.print(f"[yellow]{url}: HTTP {resp.status_code} {resp.text[:200]}[/yellow]")
                continue
            answers.append(resp.json())
    return answers


@dlq_app.command("ls")
def dlq_ls(
    name: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    control: ControlOpt = "",
    token: TokenOpt = "",
) -> None:
    """A function's dead letters on every node, newest first."""
    from edgerun.tail import printable

    found = [
        {**d, "node": a["node"]}
        for a in _each_node(control, token, "GET", "/v1/dlq", params={"function": name})
        for d in a["dead_letters"]
    ]
    found.sort(key=lambda d: -d["died_at"])
    if as_json:
        sys.stdout.write(json.dumps(found) + "\n")
        return
    table = Table()
    for col in ("event", "node", "died", "reason", "attempts", "last error"):
        table.add_column(col)
    for d in found:
        last = d["attempts"][-1] if d["attempts"] else {}
        table.add_row(
            d["id"], d["node"], time.strftime("%H:%M:%S", time.localtime(d["died_at"])),
            d["reason"], str(len(d["attempts"])),
            printable(f"{last.get('error', '')} {last.get('message', '')}"[:80]),
        )  # fmt: skip
    out.print(table)


@dlq_app.command("show")
def dlq_show(
    name: str,
    event_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    control: ControlOpt = "",
    token: TokenOpt = "",
) -> None:
    """One dead letter: the event, each attempt's error, the timestamps."""
    for answer in _each_node(control, token, "GET", "/v1/dlq", params={"function": name}):
        for d in answer["dead_letters"]:
            if d["id"] == event_id:
                sys.stdout.write(
                    json.dumps({**d, "node": answer["node"]}, indent=None if as_json else 2) + "\n"
                )
                return
    _fail(f"no dead letter {event_id} of {name} on any node that is up")


@dlq_app.command("replay")
def dlq_replay(
    name: str,
    ids: Annotated[list[str] | None, typer.Option("--id", help="Only these (repeat).")] = None,
    control: ControlOpt = "",
    token: TokenOpt = "",
) -> None:
    """Queue a function's dead letters again, where they are."""
    body = {"function": name, "ids": ids or None}
    answers = _each_node(control, token, "POST", "/v1/dlq/replay", json=body)
    out.print(f"replayed {sum(a['replayed'] for a in answers)}")


@dlq_app.command("purge")
def dlq_purge(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    control: ControlOpt = "",
    token: TokenOpt = "",
) -> None:
    """Drop a function's dead letters on every node."""
    if not yes and not typer.confirm(f"drop every dead letter of {name}?"):
        _fail("nothing dropped")
    answers = _each_node(control, token, "DELETE", "/v1/dlq", params={"function": name})
    out.print(f"purged {sum(a['purged'] for a in answers)}")


@app.command(name="logs")
def logs_cmd(
    name: Annotated[str, typer.Argument(help="Only this function.")] = "",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new ones.")] = False,
    since: Annotated[
        str, typer.Option(help="From this long ago (10m, 2h) or a Unix time.")
    ] = "10m",
    status: Annotated[str, typer.Option(help="all, or error for failures only.")] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with -f.")] = 1.0,
    control: ControlOpt = "",
    token: TokenOpt = "",
) -> None:
    """Invocation records and function output from every node, merged by time."""
    import httpx

    from edgerun.tail import Tail, http_fetch, line, parse_since, printable

    if status not in ("all", "error"):
        _fail("--status must be all or error")
    with _errors():
        tail = Tail(parse_since(since, time.time()), name or None, status == "error", follow)
    urls = _node_urls(control, token)
    auth = {"authorization": f"Bearer {_token(token)}"}
    warned: set[str] = set()
    with httpx.Client(headers=auth, timeout=5.0) as http:
        fetch = http_fetch(http)
        while True:
            entries, more = tail.poll(urls, fetch)
            for url, problem in tail.problems.items():
                if url not in warned:
                    err.print(f"[yellow]{url}: {problem}[/yellow]")
                    warned.add(url)
            warned &= set(tail.problems)
            for entry in entries:
                if as_json:
                    sys.stdout.write(json.dumps(entry) + "\n")
                    continue
                out.print(printable(line(entry)), highlight=False, markup=False)
                if entry.get("output"):
                    sys.stdout.write(
                        "".join(f"    {printable(text)}\n" for text in entry["output"].splitlines())
                    )
            sys.stdout.flush()
            if more:
                continue  # a node had more than a page: read on at once
            if not follow:
                return
            time.sleep(interval)


@nodes_app.command("revoke")
def nodes_revoke(key_id: str, control: ControlOpt = "", token: TokenOpt = "") -> None:
    """Revoke a node's credential: the cluster stops feeding it and regions refuse its forwards."""
    with _errors(), _client(control, token) as client:
        client.revoke_node(key_id)
        out.print(f"revoked node credential {key_id}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
