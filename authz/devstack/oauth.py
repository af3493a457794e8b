"""A real OAuth authorization server next to the local layout: oidc-provider under node.

The app is `tests/oauth/server.mjs` (oidc-provider pinned by its `package.json` and lock
file); `mcp-authz demo --oauth` and the end-to-end tests run the same one. It issues JWT
access tokens for the MCP resource (RFC 8707 audience), registers clients dynamically,
grants authorization code with PKCE and client credentials, and rotates its signing keys on
request through a loopback admin port. Nothing here issues or checks a token itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authz.devstack.stack import LOOPBACK, StackError, free_port, json_request

__all__ = [
    "APP_DIR",
    "DEFAULT_SCOPES",
    "DEMO_ISSUER_PORT",
    "DEMO_MACHINE",
    "DEMO_USER",
    "AuthorizationServer",
    "MachineClient",
    "User",
    "demo_grants",
    "ensure_node_modules",
    "find_node",
    "oauth_config",
    "write_demo_config",
]


APP_DIR = Path(__file__).resolve().parents[2] / "tests" / "oauth"
"""The authorization server app: server.mjs, package.json, package-lock.json."""

DEFAULT_SCOPES = ("mcp:tools", "images:generate")

_STAMP = ".mcp-authz-installed"
"""A file in node_modules naming the sha256 of the lock file it was installed from."""


def find_node() -> str:
    """The node binary (Debian's `nodejs`: 20 or newer)."""
    found = shutil.which("node")
    if found is None:
        raise StackError("node not found: install Debian's nodejs (apt-get install nodejs)")
    return found


def ensure_node_modules(app_dir: Path = APP_DIR) -> None:
    """Install the app's pinned packages with `npm ci` unless the lock file's are there.

    The install is cached: node_modules keeps the lock file's hash, and a second process
    waiting for the same install (an exclusive lock on a file beside it) finds it done.
    """
    lock_file = app_dir / "package-lock.json"
    if not lock_file.exists():
        raise StackError(f"{lock_file} is missing: the OAuth app needs the repository checkout")
    wanted = hashlib.sha256(lock_file.read_bytes()).hexdigest()
    stamp = app_dir / "node_modules" / _STAMP
    with open(app_dir / ".npm-install.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text().strip() == wanted:
            return
        npm = shutil.which("npm")
        if npm is None:
            raise StackError("npm not found: install Debian's npm (apt-get install npm)")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=app_dir,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise StackError(f"npm ci in {app_dir} failed:\n{done.stdout}{done.stderr}")
        stamp.write_text(wanted + "\n")


@dataclass(frozen=True)
class User:
    """Someone who signs in on the authorization server's form."""

    name: str
    password: str
    groups: Sequence[str] = ()


@dataclass(frozen=True)
class MachineClient:
    """A client registered from the start, for the client credentials grant."""

    client_id: str
    client_secret: str
    scopes: Sequence[str] = DEFAULT_SCOPES


@dataclass
class AuthorizationServer:
    """oidc-provider as a process on loopback: `issuer` is `http://127.0.0.1:<port>`."""

    resources: Sequence[str]
    """The resources (RFC 8707) it issues tokens for; each token's audience is one of them."""
    log_path: Path
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    users: Sequence[User] = ()
    clients: Sequence[MachineClient] = ()
    scopes: Sequence[str] = DEFAULT_SCOPES
    alg: str = "RS256"
    access_token_ttl: int = 600
    app_dir: Path = APP_DIR
    popen: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    def argv(self) -> list[str]:
        argv = [
            find_node(),
            str(self.app_dir / "server.mjs"),
            "--issuer",
            self.issuer,
            "--port",
            str(self.port),
            "--host",
            LOOPBACK,
            "--admin-port",
            str(self.admin_port),
            "--alg",
            self.alg,
            "--access-token-ttl",
            str(self.access_token_ttl),
        ]
        for resource in self.resources:
            argv += ["--resource", resource]
        for scope in self.scopes:
            argv += ["--scope", scope]
        for user in self.users:
            argv += ["--user", f"{user.name}:{user.password}:{','.join(user.groups)}"]
        for client in self.clients:
            argv += [
                "--client",
                f"{client.client_id}:{client.client_secret}:{','.join(client.scopes)}",
            ]
        return argv

    def start(self, timeout: float = 30.0) -> AuthorizationServer:
        ensure_node_modules(self.app_dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv(),
                cwd=self.app_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        metadata = f"{self.issuer}/.well-known/oauth-authorization-server"
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.popen = None
                raise StackError(f"authorization server exited\n{tail}")
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                status, _ = self._request("GET", metadata)
                admin, _ = self._request("GET", f"{self.admin_url}/healthz")
                if status == 200 and admin == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise StackError(f"authorization server not ready at {metadata}")

    def stop(self, timeout: float = 5.0) -> None:
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout)

    def __enter__(self) -> AuthorizationServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a test or the demo does to it ------------------------------------------

    def rotate_keys(self, *, keep_previous: bool = True) -> list[str]:
        """New RS256 and ES256 keys sign from now on; the old ones stay in the JWKS while
        `keep_previous`. Returns the new signing key ids."""
        status, body = self._request(
            "POST", f"{self.admin_url}/rotate", {"keep_previous": keep_previous}
        )
        if status != 200 or not isinstance(body, dict):
            raise StackError(f"key rotation failed: {status} {body}")
        return [str(kid) for kid in body["signing"]]

    def client_settings(
        self, client_id: str, *, alg: str | None = None, access_token_ttl: int | None = None
    ) -> None:
        """How the tokens of one client are signed (RS256, ES256) and how long they live."""
        settings: dict[str, Any] = {}
        if alg is not None:
            settings["alg"] = alg
        if access_token_ttl is not None:
            settings["access_token_ttl"] = access_token_ttl
        status, body = self._request(
            "POST", f"{self.admin_url}/clients/{client_id}/settings", settings
        )
        if status != 200:
            raise StackError(f"client settings refused: {status} {body}")

    def register_machine_client(self, name: str) -> MachineClient:
        """Register a client credentials client through dynamic registration (RFC 7591)."""
        status, body = self._request(
            "POST",
            f"{self.issuer}/reg",
            {
                "client_name": name,
                "grant_types": ["client_credentials"],
                "response_types": [],
                "redirect_uris": [],
                "token_endpoint_auth_method": "client_secret_basic",
            },
        )
        if status != 201 or not isinstance(body, dict):
            raise StackError(f"registration refused: {status} {body}")
        return MachineClient(str(body["client_id"]), str(body["client_secret"]), self.scopes)

    def _request(self, method: str, url: str, body: object | None = None) -> tuple[int, object]:
        return json_request(method, url, body)


def oauth_config(
    resource: str,
    issuers: Sequence[str],
    *,
    scopes: Sequence[str] = DEFAULT_SCOPES,
    default_scopes: Sequence[str] = ("mcp:tools",),
    clock_skew_seconds: int = 30,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The sidecar's `oauth.json` for a resource whose tokens these issuers sign."""
    return {
        "version": 1,
        "resource": resource,
        "authorization_servers": list(issuers),
        "scopes_supported": list(scopes),
        "default_scopes": list(default_scopes),
        "clock_skew_seconds": clock_skew_seconds,
        "algorithms": ["RS256", "ES256"],
        **(extra or {}),
    }


DEMO_USER = User("artist", "artist-password", ("artists",))
"""Who signs in on the demo's authorization server (demo use only)."""
DEMO_MACHINE = MachineClient("demo-machine", "demo-machine-secret")
"""The demo's registered client credentials client (demo use only)."""
DEMO_ISSUER_PORT = 9400


def demo_grants(issuer: str) -> list[dict[str, object]]:
    """The OAuth grants `mcp-authz demo --oauth` adds to the demo's grants.json: people of
    the group `artists` get the imagegen policy, the demo machine client the limited one."""
    return [
        {
            "id": "oauth-artists",
            "label": "OAuth: anyone signed in from the group artists",
            "policy": "imagegen",
            "oauth": {"issuer": issuer, "groups": list(DEMO_USER.groups)},
        },
        {
            "id": "oauth-machine",
            "label": "OAuth: the demo machine client (client credentials)",
            "policy": "imagegen-limited",
            "oauth": {"issuer": issuer, "client_id": DEMO_MACHINE.client_id},
        },
    ]


def write_demo_config(source: Path, target: Path, resource: str, issuer: str) -> Path:
    """The configuration directory `source` at `target` (copied unless it is the same),
    with `oauth.json` for `resource` and the demo's OAuth grants after the grants it has."""
    if source.resolve() != target.resolve():
        shutil.copytree(source, target)
    grants_path = target / "grants.json"
    document = json.loads(grants_path.read_text()) if grants_path.exists() else None
    if not isinstance(document, dict):
        document = {"version": "1", "grants": []}
    document["grants"] = [*document.get("grants", []), *demo_grants(issuer)]
    grants_path.write_text(json.dumps(document, indent=2) + "\n")
    (target / "oauth.json").write_text(json.dumps(oauth_config(resource, [issuer]), indent=2))
    return target
