"""`mcp-authz` command line: serve, demo, check-policy, pin, catalog, grant, approver,
approvals, schema."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from authz.cli.approvals import add_approvals_parser
from authz.cli.catalog import add_catalog_parser
from authz.cli.pin import add_pin_parser
from authz.config.approvers import APPROVERS_FILE, load_approvers
from authz.config.grants import hash_token, load_grants

__all__ = ["build_parser", "main"]


def _cmd_serve(args: argparse.Namespace) -> int:
    from authz.audit import configure_logging
    from authz.config.settings import Settings, SettingsError
    from authz.config.source import ConfigError
    from authz.server import serve

    try:
        settings = Settings.build(
            config=args.config,
            grpc=args.grpc,
            admin=args.admin,
            reload_interval=args.reload_interval,
            log_level=args.log_level,
            redis_url=args.redis_url,
            redis_cluster=args.redis_cluster or None,
            redis_prefix=args.redis_prefix,
            redis_timeout=args.redis_timeout,
            redis_fail_open=args.redis_fail_open or None,
            approval_webhook=args.approval_webhook,
            approvals_remote=args.approvals_remote or None,
            http_authz=args.http_authz,
            otlp_endpoint=args.otlp_endpoint,
        )
    except SettingsError as exc:
        print(f"mcp-authz serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"mcp-authz serve: invalid configuration: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mcp-authz serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from authz.devstack.demo import run_demo

    return run_demo(
        args.config, args.port, args.outputs, transport=args.transport, oauth=args.oauth
    )


def _check_lock_file(path: Path) -> list[str]:
    """A tool lock's problems, one `"FILE: $.path: message"` line each (empty: valid)."""
    from authz.pinning.lock import LockError, load_lock

    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror or exc}"]
    try:
        load_lock(raw)
    except LockError as err:
        return [f"{path}: {where}: {message}" for where, message in err.problems]
    except Exception as exc:  # e.g. RecursionError from a deeply nested schema
        return [f"{path}: cannot be loaded: {exc!r}"]
    return []


def _check_oauth_file(path: Path) -> list[str]:
    """oauth.json's problems, one line (empty: valid)."""
    from authz.oauth.config import OAuthConfigError, load_oauth

    try:
        load_oauth(path.read_bytes())
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror or exc}"]
    except OAuthConfigError as exc:
        return [f"{path}: {exc}"]
    except Exception as exc:  # e.g. RecursionError from deeply nested JSON
        return [f"{path}: cannot be loaded: {exc!r}"]
    return []


def _check_config_dir(root: Path) -> tuple[list[str], str]:
    """A configuration directory's problems as the sidecar would meet them (every policy's
    and the lock's one per line, then what `load_config` refuses in another file), and a
    summary of what it holds when it is valid."""
    from authz.config.source import POLICIES_DIR, ConfigError, load_config
    from authz.pinning.lock import LOCK_FILE
    from authz.policy import check_policy_files

    problems: list[str] = []
    reported: list[Path] = []
    policy_dir = root / POLICIES_DIR
    if policy_dir.is_dir():
        for path in sorted(policy_dir.iterdir()):
            if path.name.startswith(".") or path.suffix != ".json" or not path.is_file():
                continue
            found = check_policy_files([path])
            problems += found
            reported += [path] if found else []
    lock = root / LOCK_FILE
    if lock.exists():
        found = _check_lock_file(lock)
        problems += found
        reported += [lock] if found else []
    try:
        config = load_config(root)
    except ConfigError as exc:
        message = str(exc)
        if not any(message.startswith(f"{path}:") for path in reported):
            problems.append(message)
        return problems, ""
    if problems:  # not expected: load_config accepted what a file check refused
        return problems, ""
    pinned = "no lock" if config.pins is None else _count(len(config.pins), "pinned tool")
    grants = _count(len(config.grants), "grant")
    policies = f"{len(config.policies)} polic{'y' if len(config.policies) == 1 else 'ies'}"
    oauth = f", OAuth resource {config.oauth.resource}" if config.oauth is not None else ""
    return problems, f"{grants}, {policies}, {pinned}{oauth}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _cmd_check_policy(args: argparse.Namespace) -> int:
    from authz.policy import check_policy_files

    problems: list[str] = []
    oks: list[str] = []
    for arg in args.files:
        path = Path(arg)
        if path.is_dir():
            found, summary = _check_config_dir(path)
            oks.append(f"{arg}: ok ({summary})")
        elif path.name.endswith(".lock.json"):
            found = _check_lock_file(path)
            oks.append(f"{arg}: ok")
        elif path.name == "oauth.json":
            found = _check_oauth_file(path)
            oks.append(f"{arg}: ok")
        else:
            found = check_policy_files([path])
            oks.append(f"{arg}: ok")
        problems += found
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    for line in oks:
        print(line)
    return 0


def _cmd_schema(_args: argparse.Namespace) -> int:
    from authz.policy import policy_json_schema

    print(json.dumps(policy_json_schema(), indent=2, sort_keys=True))
    return 0


def _cmd_grant_hash(_args: argparse.Namespace) -> int:
    token = sys.stdin.readline().rstrip("\r\n")
    if not token:
        print("mcp-authz grant hash: read an empty token from stdin", file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0


def _add_with_new_token(
    path: Path,
    *,
    command: str,
    section: str,
    entry: dict[str, Any],
    token_prefix: str,
    validate: Callable[[bytes], object],
) -> str | None:
    """Append `entry` (plus `token_sha256` of a new random token) to the list `section` of
    the JSON file at `path`, validate the whole file with `validate`, and replace the file
    atomically. The token, or None after printing why nothing was written."""
    document: Any = {"version": "1", section: []}
    if path.exists():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            print(f"mcp-authz {command}: {path}: cannot be read: {exc}", file=sys.stderr)
            return None
        if not isinstance(document, dict) or not isinstance(document.get(section), list):
            print(f"mcp-authz {command}: {path}: $.{section} is not a list", file=sys.stderr)
            return None
    token = token_prefix + secrets.token_urlsafe(32)
    document[section].append({**entry, "token_sha256": hash_token(token)})
    raw = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        validate(raw)
    except ValueError as exc:  # GrantsError, ApproversError
        print(f"mcp-authz {command}: {exc}", file=sys.stderr)
        return None
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(raw)
    tmp.replace(path)
    return token


def _cmd_grant_add(args: argparse.Namespace) -> int:
    path = Path(args.config) / "grants.json"
    token = _add_with_new_token(
        path,
        command="grant add",
        section="grants",
        entry={"id": args.id, "label": args.label or args.id, "policy": args.policy},
        token_prefix="mcp_",
        validate=load_grants,
    )
    if token is None:
        return 1
    print(f"grant {args.id!r} added to {path}; its token (shown once, store it now):")
    print(token)
    policy_file = Path(args.config) / "policies" / f"{args.policy}.json"
    if not policy_file.is_file():
        print(
            f"warning: policy {args.policy!r} is not loaded ({policy_file} does not exist): "
            "every request of this grant is denied (rule: (no policy)) until it is",
            file=sys.stderr,
        )
    return 0


def _cmd_approver_add(args: argparse.Namespace) -> int:
    path = Path(args.config) / APPROVERS_FILE
    token = _add_with_new_token(
        path,
        command="approver add",
        section="approvers",
        entry={"id": args.id, "label": args.label or args.id},
        token_prefix="mcpadm_",
        validate=load_approvers,
    )
    if token is None:
        return 1
    print(f"approver {args.id!r} added to {path}; their admin token (shown once, store it now):")
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-authz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ext_authz sidecar")
    serve.add_argument("--config", help="configuration directory (grants.json, policies/)")
    serve.add_argument("--grpc", help="gRPC listen address HOST:PORT (default 127.0.0.1:9001)")
    serve.add_argument("--admin", help="admin HTTP address HOST:PORT (default 127.0.0.1:9002)")
    serve.add_argument(
        "--http-authz",
        metavar="HOST:PORT",
        help="also serve Envoy's ext_authz over HTTP (http_service, deploy/envoy-http.yaml) "
        "on this address; default: gRPC only",
    )
    serve.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="trace every decision (OpenTelemetry, needs mcp-authz-sidecar[otel]) and export "
        "the spans over OTLP/HTTP to this collector (http://collector:4318); default: "
        "$MCP_AUTHZ_OTLP_ENDPOINT, $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
        "$OTEL_EXPORTER_OTLP_ENDPOINT, else no tracing",
    )
    serve.add_argument("--reload-interval", type=float, help="seconds between config polls")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument(
        "--redis-url", help="share rate counters in Redis, e.g. redis://127.0.0.1:6379/0"
    )
    serve.add_argument(
        "--redis-cluster", action="store_true", help="the Redis URL is a Redis Cluster node"
    )
    serve.add_argument("--redis-prefix", help="key prefix (default mcp-authz)")
    serve.add_argument(
        "--redis-timeout", type=float, help="seconds per Redis operation (default 0.25)"
    )
    serve.add_argument(
        "--redis-fail-open",
        action="store_true",
        help="allow tool calls (logged as fail-open) when Redis cannot answer; default: deny",
    )
    serve.add_argument(
        "--approval-webhook",
        metavar="URL",
        help="POST each new pending approval here (http/https), Standard Webhooks; signing "
        "secret (whsec_...): "
        "$MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET",
    )
    serve.add_argument(
        "--approvals-remote",
        action="store_true",
        help="serve the approvals API to non-loopback clients too (default: loopback only; "
        "probes and /metrics are always served)",
    )
    serve.set_defaults(func=_cmd_serve)

    demo = sub.add_parser("demo", help="run Envoy + sidecar + ImageGen upstream locally")
    demo.add_argument("--config", type=Path, help="configuration directory (default deploy/config)")
    demo.add_argument(
        "--port",
        type=int,
        help="Envoy listener port (default: 10000 when free, else a free port; 0: a free port)",
    )
    demo.add_argument("--outputs", type=Path, help="where generated images are saved")
    demo.add_argument(
        "--transport",
        choices=("grpc", "http"),
        default="grpc",
        help="how Envoy asks the sidecar: ext_authz over gRPC (deploy/envoy.yaml, default) or "
        "over HTTP (deploy/envoy-http.yaml)",
    )
    demo.add_argument(
        "--oauth",
        action="store_true",
        help="also run an OAuth authorization server (oidc-provider, needs node) and serve the "
        "endpoint as an OAuth protected resource: oauth.json and OAuth grants in the demo's copy "
        "of the configuration",
    )
    demo.set_defaults(func=_cmd_demo)

    check = sub.add_parser(
        "check-policy",
        help="validate policy files, tool locks (*.lock.json), oauth.json or whole "
        "configuration directories; non-zero on any error",
    )
    check.add_argument("files", nargs="+", metavar="PATH")
    check.set_defaults(func=_cmd_check_policy)

    schema = sub.add_parser("schema", help="print the policy document's JSON Schema")
    schema.set_defaults(func=_cmd_schema)

    grant = sub.add_parser("grant", help="manage grants")
    grant_sub = grant.add_subparsers(dest="grant_command", required=True)
    ghash = grant_sub.add_parser("hash", help="print the sha256 of a token read from stdin")
    ghash.set_defaults(func=_cmd_grant_hash)
    gadd = grant_sub.add_parser("add", help="create a grant with a new random token")
    gadd.add_argument("--config", required=True, help="configuration directory")
    gadd.add_argument("--id", required=True)
    gadd.add_argument("--label")
    gadd.add_argument("--policy", required=True)
    gadd.set_defaults(func=_cmd_grant_add)

    approver = sub.add_parser("approver", help="manage approvers (who may decide held calls)")
    approver_sub = approver.add_subparsers(dest="approver_command", required=True)
    aadd = approver_sub.add_parser("add", help="add an approver with a new random admin token")
    aadd.add_argument("--config", required=True, help="configuration directory")
    aadd.add_argument("--id", required=True, help="the approver's id (recorded as decided_by)")
    aadd.add_argument("--label")
    aadd.set_defaults(func=_cmd_approver_add)
    add_approvals_parser(sub)
    add_pin_parser(sub)
    add_catalog_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`mcp-authz schema | head`): stop quietly, as a pipe
        # stage should; stdout is pointed at /dev/null so the exit flush cannot fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
