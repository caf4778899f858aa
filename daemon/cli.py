"""The ``modeld`` command: ``run`` starts the daemon; every other command talks to it over HTTP.

The CLI finds the daemon from the same configuration file (and token) the daemon reads. Exit
status 0 on success; 1 with one clear line when the daemon refuses or cannot be reached; 2 for a
wrong configuration or usage. Tables by default, ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from modeld.client import ModeldError, answer_of
from modeld.core.dialect import parse_location
from modeld.core.errors import ConfigError, RegistryDamaged, StateDirectoryLocked
from modeld.core.registry import REGISTRY_FILE, restore_registry
from modeld.daemon.process.settings import Settings, config_warnings, load_settings
from modeld.daemon.process.statelock import hold_state_lock
from modeld.daemon.producer.demo import add_demo_command
from modeld.daemon.producer.train import add_train_command

DEFAULT_CONFIG_ENV = "MODELD_CONFIG"


class CliError(Exception):
    """One line for the operator; the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        self.status = status
        super().__init__(message)


def _config_path(args: argparse.Namespace) -> Path | None:
    given = getattr(args, "config", None) or os.environ.get(DEFAULT_CONFIG_ENV)
    return Path(given) if given else None


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(_config_path(args))
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None


class Client:
    """A small HTTP client for the daemon's API."""

    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        host = settings.api.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        self.base = f"http://{host}:{settings.api.port}"
        try:
            token = settings.api_token()
        except ConfigError as exc:
            raise CliError(str(exc), 2) from None
        # the API refuses a state-changing request without it (cross-site protection)
        headers = {"X-Modeld-Client": "cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self.http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise CliError(f"modeld is not reachable at {self.base} ({exc}); is it running?") \
                from None
        try:
            return answer_of(response)
        except ModeldError as exc:
            raise CliError(f"refused ({exc.status}): {exc.detail}") from None


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _print(args: argparse.Namespace, data: Any, render: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(render(data))


def _kv(data: dict[str, Any]) -> str:
    width = max((len(k) for k in data), default=0)
    return "\n".join(
        f"{k.ljust(width)}  {json.dumps(v) if isinstance(v, dict | list) else v}"
        for k, v in data.items()
    )


# commands -------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from modeld.daemon.process.main import Daemon
    from modeld.daemon.process.workers import WORKER_ENV

    part = os.environ.get(WORKER_ENV)
    if part is not None:  # started by a control process (api.workers): one serving worker
        from modeld.daemon.process.worker import serve_as_worker

        serve_as_worker(json.loads(part))
    if args.workers is not None:  # as the environment beats the file, reloads included
        os.environ["MODELD_API__WORKERS"] = str(args.workers)
    return Daemon(_config_path(args), _settings(args)).run()


SECRET_KEYS = frozenset({"token", "smtp_password", "webhook_url"})


def _masked(data: Any) -> Any:
    """The effective configuration with its secrets replaced (it is printed)."""
    if isinstance(data, dict):
        return {k: ("***" if k in SECRET_KEYS and v is not None
                    else parse_location(v).describe() if k == "registry_url" and v
                    else _masked(v))
                for k, v in data.items()}
    if isinstance(data, list):
        return [_masked(v) for v in data]
    return data


def cmd_config_check(args: argparse.Namespace) -> int:
    """Print the effective configuration (file, then environment) and every warning."""
    path = Path(args.file) if args.file else _config_path(args)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None
    warnings = config_warnings(settings)
    effective = _masked(settings.model_dump(mode="json"))
    if getattr(args, "json", False):
        print(json.dumps({"config": effective, "warnings": [
            {"key": key, "warning": text} for key, text in warnings]}, indent=2))
        return 0
    import yaml

    print(f"# effective configuration of {path or 'the embedded defaults'} "
          "(file, then MODELD_ environment variables)")
    print(yaml.safe_dump(effective, sort_keys=False).rstrip())
    for key, text in warnings:
        print(f"warning: {key}: {text}")
    print(f"{len(warnings)} warning(s)" if warnings else "no warnings")
    return 0


WORKER_COLUMNS = ("index", "pid", "alive", "ready", "restarts", "deployed_version",
                  "fallback_version", "config_generation")


def cmd_status(args: argparse.Namespace) -> int:
    data = Client(_settings(args)).call("GET", "/api/v1/status")

    def render(d: dict[str, Any]) -> str:
        workers = d.get("workers")
        if not workers:
            return _kv(d)
        return (_kv({k: v for k, v in d.items() if k != "workers"}) + "\nworkers:\n"
                + _table(workers, WORKER_COLUMNS))

    _print(args, data, render)
    return 0


FLEET_COLUMNS = ("id", "role", "version", "since", "last_reconcile", "heartbeat_age_seconds",
                 "alive", "url")


def cmd_fleet(args: argparse.Namespace) -> int:
    data = Client(_settings(args)).call("GET", "/api/v1/fleet")

    def render(d: dict[str, Any]) -> str:
        lines = [_table(d["members"], FLEET_COLUMNS)]
        if d["alarm"]:
            lines.append(f"ALARM: {d['alarm']}")
        elif d["split_since"]:
            lines.append(f"swapping: more than one version served since {d['split_since']}")
        return "\n".join(lines)

    _print(args, data, render)
    return 0


MODEL_COLUMNS = ("version", "status", "quality_score", "model_type", "created_at", "imported_at")


def cmd_models_list(args: argparse.Namespace) -> int:
    data = Client(_settings(args)).call("GET", "/api/v1/models")
    _print(args, data, lambda rows: _table(rows, MODEL_COLUMNS) if rows else "no models yet")
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    data = Client(_settings(args)).call("GET", f"/api/v1/models/{args.version}")
    _print(args, data, _kv)
    return 0


def cmd_models_import(args: argparse.Namespace) -> int:
    client = Client(_settings(args), timeout=300)
    body = {"validate": not args.no_validate}
    if args.latest:
        data = client.call("POST", "/api/v1/models/import-latest", body)
    elif args.path:
        # a folder given from the current directory; otherwise a name inside models/
        local = Path(args.path)
        path = str(local.resolve()) if local.is_dir() else args.path
        data = client.call("POST", "/api/v1/models/import", {"path": path, **body})
    else:
        raise CliError("give a PATH inside the training service's models folder, or --latest", 2)
    _print(args, data, lambda d: f"{d['status']}: {d['version']} "
           f"(quality {d['report']['quality_score'] if d.get('report') else '-'}); "
           f"serving {d.get('deployed_version')}")
    return 0


def cmd_models_validate(args: argparse.Namespace) -> int:
    data = Client(_settings(args), timeout=300).call(
        "POST", f"/api/v1/models/{args.version}/validate")
    _print(args, data, lambda d: _kv({k: d[k] for k in (
        "accepted", "quality_score", "errors", "warnings", "recommendations")}))
    return 0


def cmd_models_deploy(args: argparse.Namespace) -> int:
    data = Client(_settings(args), timeout=300).call(
        "POST", f"/api/v1/models/{args.version}/deploy")
    _print(args, data, lambda d: f"serving {d['deployed_version']}")
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    path = f"/api/v1/models/{args.version}/rollback" if args.version else "/api/v1/models/rollback"
    data = Client(_settings(args), timeout=300).call("POST", path)
    _print(args, data, lambda d: f"serving {d['deployed_version']}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    client = Client(_settings(args))
    path = "/api/v1/transfer-history" if args.transfers else "/api/v1/deployments"
    data = client.call("GET", path)
    columns = (("transferred_at", "version", "status", "source_path", "detail")
               if args.transfers else ("at", "from_version", "to_version", "actor", "reason"))
    _print(args, data, lambda rows: _table(rows, columns) if rows else "no history yet")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """JSON lines of records on stdin; one JSON result per line on stdout, in order."""
    client = Client(_settings(args))
    batch: list[Any] = []

    def flush() -> None:
        if not batch:
            return
        data = client.call("POST", "/api/v1/score", {"records": batch})
        for result in data["results"]:
            print(json.dumps({"model_version": data["model_version"], **result}))
        batch.clear()

    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            batch.append(json.loads(line))
        except ValueError as exc:
            raise CliError(f"stdin line {number} is not JSON: {exc}") from None
        if len(batch) >= args.batch:
            flush()
    flush()
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    client = Client(_settings(args))
    data = client.call("GET", "/api/v1/drift")

    def render(d: dict[str, Any]) -> str:
        if not d["reports"]:
            return "no model deployed"
        lines = []
        for version, report in d["reports"].items():
            progress = report.get("baseline_progress")
            alarm = report.get("last_alarm_at")
            when = (datetime.fromtimestamp(alarm, UTC).isoformat(timespec="seconds")
                    if alarm else "never")
            lines.append(f"{version}: {report['status']} (reference: "
                         f"{report['reference_source']}"
                         + (f", baseline {progress[0]}/{progress[1]}" if progress else "")
                         + f"; last alarm: {when})")
            lines.append(_table(report["signals"], ("name", "status", "statistic", "p_value",
                                                    "effect_size", "psi", "window_size")))
        return "\n".join(lines)

    _print(args, data, render)
    return 0


def _render_shadow(d: dict[str, Any]) -> str:
    candidate = d["candidate"]
    if candidate is None:
        return f"no candidate (deploy policy {d['deploy_policy']})"
    lines = [f"candidate {candidate['version']} beside {candidate['champion']} since "
             f"{candidate['since']} (deploy policy {d['deploy_policy']}, canary "
             f"{d['canary']['percent']:g}% by {d['canary']['key']})"]
    if candidate["held"]:
        lines.append(f"held: {candidate['held']}")
    report, gate = d["report"], d["gate"]
    if report is None:
        lines.append("no records compared yet")
        return "\n".join(lines)
    latency = report["latency_ms"]
    lines.append(_kv({
        "records_compared": f"{report['records_compared']} (gate at "
                            f"{d['shadow']['min_records']})",
        "flag_agreement": report["flag_agreement"],
        "kappa": report["kappa"],
        "flag_rate": report["flag_rate"],
        "flag_rate_ratio": report["flag_rate_ratio"],
        "spearman": report["spearman"],
        "score_difference": report["score_difference_quantiles"],
        "latency_ms": latency,
        "dropped": d["shadow"]["dropped"],
    }))
    if gate is not None:
        verdict = ("passes" if gate["passed"] else "fails on " + ", ".join(gate["failed"])
                   if gate["ready"] else "waits for min_records")
        lines.append(f"gate: {verdict}")
        lines.append(_table(gate["conditions"], ("name", "holds", "observed", "required")))
    return "\n".join(lines)


def cmd_shadow(args: argparse.Namespace) -> int:
    client = Client(_settings(args), timeout=300)
    action = getattr(args, "shadow_command", None)
    if action is None:
        _print(args, client.call("GET", "/api/v1/shadow"), _render_shadow)
        return 0
    body = {"version": args.version, "reason": args.reason}
    data = client.call("POST", f"/api/v1/shadow/{action}", body)
    _print(args, data, lambda d: f"promoted {d['promoted']}; serving {d['deployed_version']}"
           if action == "promote" else f"discarded {d['discarded']}; serving "
           f"{d['deployed_version']}")
    return 0


def add_shadow_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    shadow = sub.add_parser("shadow", parents=parents, help="the candidate on trial: its "
                            "comparison with the deployed version; promote or discard it")
    shadow.set_defaults(func=cmd_shadow)
    ssub = shadow.add_subparsers(dest="shadow_command")
    for action in ("promote", "discard"):
        act = ssub.add_parser(action, parents=parents, help=f"{action} the candidate")
        act.add_argument("version", nargs="?", help="refused when another is the candidate")
        act.add_argument("--reason", help="recorded with the decision")
        act.set_defaults(func=cmd_shadow)
ANOMALY_COLUMNS = ("at", "host", "process", "score", "version", "why", "message")


def cmd_anomalies(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("since", args.since), ("host", args.host)) if v}
    path = str(httpx.URL("/api/v1/anomalies", params={"limit": args.limit, **params}))
    data = Client(_settings(args)).call("GET", path)

    def render(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no anomalies"
        return _table([{**r, "why": (r.get("explanation") or {}).get("summary", ""),
                         "message": (r.get("message") or "")[:60]} for r in rows],
                      ANOMALY_COLUMNS)

    _print(args, data, render)
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    """The MCP server over stdio, relayed to the running daemon's /mcp."""
    from modeld.daemon.http.mcp_tools import serve_stdio

    client = Client(_settings(args))
    client.call("GET", "/api/v1/status")  # one clear line now if the daemon is not there
    token = client.http.headers.get("authorization")
    return serve_stdio(f"{client.base}/mcp", {"Authorization": token} if token else {})


def cmd_reload(args: argparse.Namespace) -> int:
    """Send SIGHUP and wait until the daemon reports the reload applied or refused."""
    pid = args.pid
    if pid is None:
        raise CliError("--pid is required (systemd passes $MAINPID)", 2)
    try:
        settings = load_settings(_config_path(args))
    except ConfigError as exc:
        # The daemon will refuse this file too (and say so in its log); it keeps the old one.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
        raise CliError(f"reload refused, old configuration kept: {exc}") from None
    # /healthz needs no token: a reload that changes the token is followed all the same
    client = Client(settings)
    before = client.call("GET", "/healthz")
    tried = (before.get("last_reload") or {}).get("generation", 0)
    baseline = max(before["config_generation"], tried)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CliError(f"no process {pid}: is modeld running?") from None
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        last = client.call("GET", "/healthz").get("last_reload")
        if last and last["generation"] > baseline:
            if last["ok"]:
                print(f"reloaded: configuration generation {last['generation']}")
                return 0
            raise CliError(f"reload refused, old configuration kept: {last['error']}")
        time.sleep(0.05)
    raise CliError(f"no reload result within {args.timeout:g} s")


def cmd_registry_restore(args: argparse.Namespace) -> int:
    """Put a backup in place of the registry while the daemon is stopped (its lock says so)."""
    directory = _settings(args).storage.directory
    try:
        lock = hold_state_lock(directory)
    except StateDirectoryLocked as exc:
        raise CliError(f"{exc}: stop it before restoring its registry") from None
    try:
        kept = restore_registry(Path(args.backup), directory / REGISTRY_FILE,
                                datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
    except RegistryDamaged as exc:
        raise CliError(str(exc)) from None
    finally:
        os.close(lock)
    print(f"restored {directory / REGISTRY_FILE} from {args.backup}"
          + (f"; the previous file is kept as {kept}" if kept else ""))
    return 0


# the parser -----------------------------------------------------------------------------


def _worker_count(text: str) -> int:
    count = int(text)
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError(f"{text} is not a number of workers from 1 to 64")
    return count


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's defaults must not overwrite what was given before it
    common.add_argument("--config", "-c", default=argparse.SUPPRESS,
                        help="configuration file (default: $MODELD_CONFIG, else embedded defaults)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON for scripts")
    parser = argparse.ArgumentParser(prog="modeld", description="modeld: imports, validates, "
                                     "hot-swaps and serves anomaly-detection models",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    run.add_argument("--workers", type=_worker_count, default=None,
                     help="serving processes on the one port (default: api.workers, 1)")
    run.set_defaults(func=cmd_run)
    sub.add_parser("status", parents=[common], help="what serves now").set_defaults(
        func=cmd_status)
    sub.add_parser("fleet", parents=[common], help="every daemon on this registry: who "
                   "serves what").set_defaults(func=cmd_fleet)

    config = sub.add_parser("config", parents=[common], help="check a configuration file")
    csub = config.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", parents=[common], help="print the effective configuration "
                            "and every warning (exit status 2 when it is refused)")
    check.add_argument("file", nargs="?", help="default: --config, else $MODELD_CONFIG")
    check.set_defaults(func=cmd_config_check)

    models = sub.add_parser("models", parents=[common], help="manage model versions")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", parents=[common]).set_defaults(func=cmd_models_list)
    show = msub.add_parser("show", parents=[common])
    show.add_argument("version")
    show.set_defaults(func=cmd_models_show)
    imp = msub.add_parser("import", parents=[common])
    imp.add_argument("path", nargs="?")
    imp.add_argument("--latest", action="store_true")
    imp.add_argument("--no-validate", action="store_true",
                     help="skip the quality gate (never the serving checks)")
    imp.set_defaults(func=cmd_models_import)
    val = msub.add_parser("validate", parents=[common])
    val.add_argument("version")
    val.set_defaults(func=cmd_models_validate)
    dep = msub.add_parser("deploy", parents=[common])
    dep.add_argument("version")
    dep.set_defaults(func=cmd_models_deploy)
    rb = msub.add_parser("rollback", parents=[common])
    rb.add_argument("version", nargs="?")
    rb.set_defaults(func=cmd_models_rollback)

    hist = sub.add_parser("history", parents=[common], help="deployment history, newest first")
    hist.add_argument("--transfers", action="store_true", help="the transfer history instead")
    hist.set_defaults(func=cmd_history)

    score = sub.add_parser("score", parents=[common],
                           help="score JSON-lines records from stdin")
    score.add_argument("--batch", type=int, default=100)
    score.set_defaults(func=cmd_score)

    sub.add_parser("drift", parents=[common], help="the drift report of the deployed version"
                   ).set_defaults(func=cmd_drift)

    add_shadow_command(sub, parents=[common])
    anomalies = sub.add_parser("anomalies", parents=[common],
                               help="recent anomalies with their explanations, newest first")
    anomalies.add_argument("--since", help="ISO-8601 time they were scored, e.g. "
                           "2026-11-28T10:00:00Z")
    anomalies.add_argument("--host", help="only this host")
    anomalies.add_argument("--limit", type=int, default=50)
    anomalies.set_defaults(func=cmd_anomalies)

    sub.add_parser("mcp", parents=[common], help="the MCP server over stdio, for agents that "
                   "start tools as processes (talks to the running daemon)"
                   ).set_defaults(func=cmd_mcp)

    add_train_command(sub, parents=[common])
    add_demo_command(sub, parents=[common])

    registry = sub.add_parser("registry", parents=[common], help="the registry's backups")
    rsub = registry.add_subparsers(dest="registry_command", required=True)
    restore = rsub.add_parser("restore", parents=[common],
                              help="replace the registry with BACKUP (the daemon stopped)")
    restore.add_argument("backup", help="a storage.directory/backups/registry-*.sqlite3 file")
    restore.set_defaults(func=cmd_registry_restore)

    reload = sub.add_parser("reload", parents=[common],
                            help="SIGHUP the daemon and wait for the result (ExecReload)")
    reload.add_argument("--pid", type=int)
    reload.add_argument("--timeout", type=float, default=30.0)
    reload.set_defaults(func=cmd_reload)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"modeld: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
