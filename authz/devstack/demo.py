"""`mcp-authz demo`: the whole layout on localhost, with demo grants and live decisions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

from authz.config.grants import hash_token
from authz.devstack.assets import AssetMissing, asset_path
from authz.devstack.oauth import (
    DEMO_ISSUER_PORT,
    DEMO_MACHINE,
    DEMO_USER,
    AuthorizationServer,
    write_demo_config,
)
from authz.devstack.stack import LOOPBACK, Ports, Stack, StackError, find_envoy, free_port
from authz.extras import ExtraMissing, require_extra
from authz.pinning.lock import LOCK_FILE, LockError, load_lock

__all__ = [
    "DEFAULT_ADMIN_PORT",
    "DEFAULT_PORT",
    "DEMO_APPROVER_TOKEN",
    "DEMO_TOKENS",
    "default_config_dir",
    "run_demo",
]


def default_config_dir() -> Path:
    """deploy/config as installed (package data; deploy/config itself in a checkout)."""
    return asset_path("config")


DEMO_TOKENS = {
    "demo-artist": "mcp-demo-artist-token",
    "demo-limited": "mcp-demo-limited-token",
}
"""Well-known tokens of the demo grants in deploy/config/grants.json (demo use only)."""
DEMO_APPROVER_TOKEN = "mcp-demo-approver-token"
"""Well-known token of the demo approver in deploy/config/approvers.json (demo use only)."""


DEFAULT_PORT = 10000
DEFAULT_ADMIN_PORT = 9002
"""The sidecar's admin API (approvals) on the port `mcp-authz approvals` uses by default."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _known_demo_tokens(config_dir: Path) -> dict[str, str]:
    try:
        grants = json.loads((config_dir / "grants.json").read_text())["grants"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    hashes = {g.get("token_sha256"): g.get("id") for g in grants if isinstance(g, dict)}
    return {
        str(hashes[hash_token(token)]): token
        for token in DEMO_TOKENS.values()
        if hash_token(token) in hashes
    }


def _demo_approver(config_dir: Path) -> str | None:
    """The demo approver's token, if approvers.json lists it."""
    try:
        approvers = json.loads((config_dir / "approvers.json").read_text())["approvers"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    hashes = {a.get("token_sha256") for a in approvers if isinstance(a, dict)}
    return DEMO_APPROVER_TOKEN if hash_token(DEMO_APPROVER_TOKEN) in hashes else None


def _pinned(config_dir: Path) -> str:
    """What the banner says of the tool lock: `pinned 4 tools (tools.lock.json)`."""
    path = config_dir / LOCK_FILE
    try:
        lock = load_lock(path.read_bytes())
    except FileNotFoundError:
        return f"not pinned (no {LOCK_FILE}; run mcp-authz pin to pin them)"
    except (OSError, LockError) as exc:
        return f"{LOCK_FILE} unusable: {exc}"
    count = len(lock)
    return f"pinned {count} tool{'' if count == 1 else 's'} ({LOCK_FILE})"


def state_file() -> Path:
    """Where a running demo says where it listens (`scripts/demo_client.py` reads it)."""
    return Path(tempfile.gettempdir()) / f"mcp-authz-demo-{os.getuid()}.json"


def _write_state(mcp_url: str) -> Path:
    path = state_file()
    path.write_text(json.dumps({"mcp_url": mcp_url, "pid": os.getpid()}))
    return path


def _clear_state(path: Path) -> None:
    """Remove the state file if it still names this demo (another may have started since)."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def running_demo_url() -> str | None:
    """The MCP URL of the demo running now (None: none is)."""
    try:
        state = json.loads(state_file().read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    url = state.get("mcp_url")
    return url if isinstance(url, str) else None


def _pump_decisions(stream: IO[bytes], out: IO[str], ready: threading.Event | None = None) -> None:
    """The sidecar's log lines as the demo terminal shows them. Decisions made before
    `ready` is set (the stack's own readiness probes) are not shown."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip()
        try:
            event = json.loads(line)
        except ValueError:
            out.write(f"  {line}\n")
            out.flush()
            continue
        if event.get("event") == "approval":
            who = f" by {event['approver']}" if event.get("approver") else ""
            out.write(
                f"         ↳ approval {event.get('approval_id')} {event.get('action')}{who}"
                f"  grant={event.get('grant_id')}  {event.get('tool')}\n"
            )
        elif event.get("event") == "response":
            notes = []
            if event.get("tools_removed"):
                notes.append(f"tools/list: {event['tools_removed']} hidden tool(s) removed")
            if event.get("give_back"):
                notes.append(f"quota given back ({event.get('reason')})")
            if notes:
                out.write(f"         ↳ {'; '.join(notes)}\n")
        elif event.get("event") == "tool_definition_changed":
            old = (event.get("old_hash") or "")[:12] or "not pinned"
            new = (event.get("new_hash") or "")[:12]
            effect = (
                "removed from tools/list, calls denied (pin)"
                if event.get("pinning") == "enforce"
                else "reported only (pinning: report)"
            )
            out.write(
                f"  DRIFT  {event.get('tool')}: definition {event.get('change')} "
                f"(sha256 {old} → {new}); {effect}\n"
            )
        elif event.get("event") == "config_rejected":
            out.write(
                f"  [config] rejected: {event.get('error')}\n"
                "           kept the last good configuration (fix the file: it applies "
                "without a restart)\n"
            )
        elif event.get("event") == "config_applied":
            again = " (the last good one again)" if event.get("restored") else ""
            out.write(
                f"  [config] config_applied{again}: "
                f"fingerprint {str(event.get('fingerprint'))[:12]}\n"
            )
        elif event.get("event") != "decision":
            out.write(f"  [{event.get('level', 'info')}] {event.get('event')}\n")
        elif ready is None or ready.is_set():
            what = event.get("tool") or event.get("method") or event.get("http_method")
            rule = f"  rule={event['rule']}" if event.get("rule") else ""
            held = event.get("kind") == "approval_required"
            verdict = "HOLD" if held else str(event.get("decision")).upper()
            out.write(
                f"  {verdict:5}  grant={event.get('grant_id') or '-'}  "
                f"{what}{rule}  {event.get('duration_ms')}ms\n"
            )
        out.flush()


def _start_oauth(
    config: Path, target: Path, workdir: Path, ports: Ports
) -> AuthorizationServer | None:
    """`--oauth`: the real authorization server (oidc-provider) on port 9400 (or a free
    one), and `config` at `target` (itself, or a copy) with oauth.json and the demo's OAuth
    grants."""
    issuer_port = DEMO_ISSUER_PORT if _port_free(DEMO_ISSUER_PORT) else free_port()
    resource = f"http://{LOOPBACK}:{ports.envoy}/mcp"
    server = AuthorizationServer(
        resources=[resource],
        log_path=workdir / "authorization-server.log",
        port=issuer_port,
        users=[DEMO_USER],
        clients=[DEMO_MACHINE],
    )
    print("mcp-authz demo: starting the OAuth authorization server (oidc-provider)…")
    try:
        server.start()
    except StackError as exc:
        print(f"demo failed to start: {exc}", file=sys.stderr)
        return None
    write_demo_config(config, target, resource, server.issuer)
    return server


def _print_oauth(server: AuthorizationServer, stack: Stack) -> None:
    origin = f"http://{LOOPBACK}:{stack.ports.envoy}"
    print(f"  OAuth       authorization server {server.issuer} (oidc-provider)")
    print(f"  metadata    {origin}/.well-known/oauth-protected-resource/mcp")
    print(
        f"  sign in     {DEMO_USER.name} / {DEMO_USER.password}  (grant oauth-artists; an MCP "
        "client that speaks OAuth needs only the MCP URL)"
    )
    print(
        f"  machine     client {DEMO_MACHINE.client_id} / {DEMO_MACHINE.client_secret} "
        "(grant oauth-machine), client credentials:"
    )
    print(
        f"              curl -s -u {DEMO_MACHINE.client_id}:{DEMO_MACHINE.client_secret} "
        f"-d grant_type=client_credentials -d scope=mcp:tools -d resource={stack.mcp_url} "
        f"{server.issuer}/token"
    )


def run_demo(
    config_dir: Path | None,
    port: int | None,
    outputs: Path | None,
    transport: str = "grpc",
    oauth: bool = False,
) -> int:
    """`transport`: how Envoy asks the sidecar, "grpc" (deploy/envoy.yaml) or "http"
    (deploy/envoy-http.yaml). `oauth`: also run the OAuth authorization server and serve the
    endpoint as a protected resource (oauth.json and OAuth grants in the demo's copy of the
    configuration)."""
    try:  # what an installation may lack: say what to install before starting anything
        require_extra("imagegen", "mcp-authz demo", install=("imagegen", "envoy"))
        find_envoy()
        source = config_dir.resolve() if config_dir is not None else default_config_dir()
    except (ExtraMissing, StackError, AssetMissing) as exc:
        print(f"demo cannot start: {exc}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="mcp-authz-demo-"))
    if config_dir is not None:
        config = source
        config_note = "(edit policies; changes apply without a restart)"
    else:
        # a copy: following the README's edits never changes the tracked files
        config = workdir / "config"
        shutil.copytree(source, config)
        config_note = f"(a copy of {source}: edit it; changes apply without a restart)"
    outputs_dir = (outputs or Path.cwd() / "outputs").resolve()
    offline = not os.environ.get("GOOGLE_API_KEY")
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb")
    writer = os.fdopen(write_fd, "wb")
    ports = Ports()
    if port is None:
        ports.envoy = DEFAULT_PORT if _port_free(DEFAULT_PORT) else ports.envoy
    elif port != 0:  # 0: any free port (Ports() has picked one)
        ports.envoy = port
    if _port_free(DEFAULT_ADMIN_PORT):
        ports.authz_admin = DEFAULT_ADMIN_PORT
    authorization: AuthorizationServer | None = None
    if oauth:
        target = workdir / "config-oauth" if config_dir is not None else config
        authorization = _start_oauth(config, target, workdir, ports)
        if authorization is None:
            return 1
        config = target
    stack = Stack(
        config_dir=config,
        outputs_dir=outputs_dir,
        workdir=workdir,
        ports=ports,
        offline_gemini=offline,
        sidecar_stdout=writer,
        reload_interval=1.0,
        transport=transport,
    )
    ready = threading.Event()
    pump = threading.Thread(target=_pump_decisions, args=(reader, sys.stdout, ready), daemon=True)
    pump.start()
    print("mcp-authz demo: starting Envoy, the policy sidecar and the ImageGen MCP server…")
    try:
        stack.start()
    except StackError as exc:
        print(f"demo failed to start: {exc}", file=sys.stderr)
        if authorization is not None:
            authorization.stop()
        return 1
    finally:
        writer.close()
    ready.set()
    state = _write_state(stack.mcp_url)
    tokens = _known_demo_tokens(config)
    print()
    print(f"  MCP URL     {stack.mcp_url}")
    config_file = "deploy/envoy-http.yaml" if transport == "http" else "deploy/envoy.yaml"
    print(f"  ext_authz   {transport} ({config_file})")
    print(f"  config      {config}  {config_note}")
    print(f"  tools       {_pinned(config)}")
    print(f"  upstream    {stack.upstream_url}  (the MCP server itself: mcp-authz pin reads it)")
    print(f"  outputs     {outputs_dir}")
    print(f"  Gemini      {'offline endpoint' if offline else 'real API (GOOGLE_API_KEY)'}")
    print(f"  logs        {workdir}")
    for grant_id, token in tokens.items():
        print(f"  grant {grant_id:<10} Authorization: Bearer {token}")
    if not tokens:
        print("  (no demo grants in this config: use your own tokens)")
    if authorization is not None:
        _print_oauth(authorization, stack)
    print(f"  admin API   {stack.admin_url}  (approvals; probes /healthz /readyz /metrics)")
    approver = _demo_approver(config)
    if approver is not None:
        admin_flag = (
            "" if stack.ports.authz_admin == DEFAULT_ADMIN_PORT else (f" --admin {stack.admin_url}")
        )
        print(
            f"  approver    MCP_AUTHZ_ADMIN_TOKEN={approver} mcp-authz approvals list{admin_flag}"
        )
    print("\nDecisions (Ctrl-C to stop):")
    sys.stdout.flush()

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            for name, proc in list(stack.procs.items()):
                if proc.popen.poll() is not None:
                    print(f"{name} exited with {proc.popen.returncode}; stopping", file=sys.stderr)
                    stop.set()
    finally:
        print("\nstopping…")
        _clear_state(state)
        stack.stop()
        if authorization is not None:
            authorization.stop()
        print("stopped.")
    return 0
