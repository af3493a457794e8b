"""Mesh identities on the real Envoy: mTLS client certificates (SPIFFE IDs) and JWTs verified
by Envoy's jwt_authn filter, beside bearer tokens, with deploy/envoy-mesh.yaml.

Everything is generated here: a throwaway CA, Envoy's server certificate, client certificates
with SPIFFE URI SANs, an RSA key whose public half is Envoy's local JWKS, and JWTs signed
with pyjwt. Requests go over real TLS (python `ssl`/`http.client`) with a client
certificate; the upstream's execution record (`grant` = the x-mcp-grant it saw) shows who
ran what.

Precedence (authz/pipeline/identity.py `identify`): a JWT verified by Envoy, else the
Authorization bearer token, else the client certificate's SPIFFE ID. A credential that is
present but names no grant is a 401; it never falls back to the next one.
"""

from __future__ import annotations

import base64
import copy
import datetime
import http.client
import ipaddress
import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import RSAAlgorithm

from authz.config.grants import hash_token
from authz.devstack.envoy_config import load_envoy_config, render_envoy_config, write_envoy_config
from authz.devstack.stack import LOOPBACK, Stack, find_envoy, free_port
from authz.envoy.denial import DECISION_HEADER
from authz.envoy.grpc_authz import JWT_AUTHN_NAMESPACE
from authz.pipeline.identity import JWT_PAYLOAD_KEY
from tests.e2e.conftest import executed
from tests.e2e.corpus import DENIED, GEMINI, OPENAI, call_body, mcp_headers
from tests.e2e.corpus import Reply as RawReply

ROOT = Path(__file__).resolve().parents[2]
PLAIN_CONFIG = ROOT / "deploy" / "envoy.yaml"
MESH_CONFIG = ROOT / "deploy" / "envoy-mesh.yaml"

TRUST_DOMAIN = "example.org"
ISSUER = "https://idp.example.org"
AUDIENCE = "mcp-authz"
KID = "mesh-key-1"


def spiffe(name: str, domain: str = TRUST_DOMAIN) -> str:
    return f"spiffe://{domain}/ns/agents/sa/{name}"


POLICIES: dict[str, Any] = {
    "gemini-only": {"version": "1", "default": "deny", "tools": {GEMINI: {}}},
    "nothing": {"version": "1", "default": "deny"},
}

GRANTS: list[dict[str, Any]] = [
    {"id": "tok-gemini", "token_sha256": hash_token("mesh-token-gemini"), "policy": "gemini-only"},
    {"id": "tok-nothing", "token_sha256": hash_token("mesh-token-nothing"), "policy": "nothing"},
    {"id": "painter", "spiffe_id": spiffe("painter"), "policy": "gemini-only"},
    {"id": "sketcher", "spiffe_id": spiffe("sketcher"), "policy": "nothing"},
    {"id": "alice", "jwt": {"issuer": ISSUER, "subject": "alice"}, "policy": "gemini-only"},
    {"id": "carol", "jwt": {"issuer": ISSUER, "subject": "carol"}, "policy": "nothing"},
    {
        "id": "art-team",
        "jwt": {
            "issuer": ISSUER,
            "subject": "bob",
            "audience": AUDIENCE,
            "claims": {"team": "art", "level": 2},
        },
        "policy": "gemini-only",
    },
]

pytestmark = pytest.mark.e2e


# -- throwaway PKI and JWT keys ---------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclass
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path

    @classmethod
    def create(cls, directory: Path, name: str) -> CA:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        path = directory / f"{name}.crt"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, path)

    def issue(
        self,
        directory: Path,
        name: str,
        *,
        uris: tuple[str, ...] = (),
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        common_name: str | None = None,
        server: bool = False,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name or name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(directory / f"{name}.crt", directory / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, issued.key)
        return issued


@dataclass
class Mesh:
    """Everything the stack and the tests share: files, keys and the running stack."""

    directory: Path
    ca: CA
    server: Issued
    clients: dict[str, Issued]
    jwt_key: rsa.RSAPrivateKey
    rogue_jwt_key: rsa.RSAPrivateKey
    jwks: Path
    stack: Stack | None = None

    def context(self, client: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca.path))
        if client is not None:
            issued = self.clients[client]
            ctx.load_cert_chain(str(issued.cert), str(issued.key))
        return ctx

    def token(
        self,
        subject: str,
        *,
        key: rsa.RSAPrivateKey | None = None,
        issuer: str = ISSUER,
        audience: str | list[str] = AUDIENCE,
        expires_in: int = 600,
        kid: str = KID,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload = {
            "iss": issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + expires_in,
            **claims,
        }
        return pyjwt.encode(payload, key or self.jwt_key, algorithm="RS256", headers={"kid": kid})


def _jwks(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=KID, alg="RS256", use="sig")
    return {"keys": [jwk]}


def make_mesh(directory: Path) -> Mesh:
    directory.mkdir(parents=True, exist_ok=True)
    ca = CA.create(directory, "mesh-ca")
    rogue_ca = CA.create(directory, "rogue-ca")
    server = ca.issue(directory, "envoy", dns=("localhost",), ips=(LOOPBACK,), server=True)
    clients = {
        name: ca.issue(directory, name, uris=(spiffe(name),))
        for name in ("painter", "sketcher", "stranger", "probe")
    }
    # Refused in the TLS handshake (they never reach the sidecar):
    clients["rogue-painter"] = rogue_ca.issue(directory, "rogue-painter", uris=(spiffe("painter"),))
    clients["other-domain"] = ca.issue(
        directory, "other-domain", uris=(spiffe("painter", "evil.example"),)
    )
    clients["cn-only"] = ca.issue(directory, "cn-only", common_name=spiffe("painter"))
    jwt_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rogue_jwt_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps(_jwks(jwt_key)))
    return Mesh(directory, ca, server, clients, jwt_key, rogue_jwt_key, jwks)


# -- the mesh configuration, retargeted at the generated files --------------------------------


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    listener = cfg["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _filter(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    found = [f for f in _hcm(cfg)["http_filters"] if f["name"] == name]
    assert len(found) == 1, name
    typed: dict[str, Any] = found[0]["typed_config"]
    return typed


def _tls(cfg: dict[str, Any]) -> dict[str, Any]:
    chain = cfg["static_resources"]["listeners"][0]["filter_chains"][0]
    typed: dict[str, Any] = chain["transport_socket"]["typed_config"]
    return typed


def use_mesh_files(cfg: dict[str, Any], mesh: Mesh) -> None:
    """Point the mesh configuration's certificate, CA and JWKS paths at `mesh`'s files."""
    common = _tls(cfg)["common_tls_context"]
    (certificate,) = common["tls_certificates"]
    certificate["certificate_chain"]["filename"] = str(mesh.server.cert)
    certificate["private_key"]["filename"] = str(mesh.server.key)
    common["validation_context"]["trusted_ca"]["filename"] = str(mesh.ca.path)
    for provider in _filter(cfg, "envoy.filters.http.jwt_authn")["providers"].values():
        provider["local_jwks"]["filename"] = str(mesh.jwks)


def write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for name, doc in POLICIES.items():
        (root / "policies" / f"{name}.json").write_text(json.dumps(doc))
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": GRANTS}, indent=2))
    return root


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("mesh")
    the_mesh = make_mesh(base / "pki")
    record = base / "executed.jsonl"
    record.touch()
    stack = Stack(
        config_dir=write_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        envoy_source=MESH_CONFIG,
        envoy_transform=lambda cfg: use_mesh_files(cfg, the_mesh),
        # The readiness probe's certificate is valid but has no grant: a 401 from the sidecar.
        client_tls=the_mesh.context("probe"),
        # over HTTP: deploy/envoy-mesh.yaml turned into its HTTP twin (http_transport)
        transport=transport,
    )
    with stack:
        the_mesh.stack = stack
        yield the_mesh


# -- HTTPS requests -----------------------------------------------------------------------------


@dataclass
class Reply(RawReply):
    @property
    def decided(self) -> bool:
        """The sidecar answered (its decision id comes back on allows and denials alike)."""
        return DECISION_HEADER in self.headers


def post(
    mesh: Mesh,
    client: str | None,
    tool: str = GEMINI,
    headers: dict[str, str] | None = None,
) -> Reply:
    """A stateless tools/call of `tool` over HTTPS with `client`'s certificate."""
    assert mesh.stack is not None
    conn = http.client.HTTPSConnection(
        LOOPBACK, mesh.stack.ports.envoy, context=mesh.context(client), timeout=15
    )
    try:
        all_headers = {
            "Accept": "application/json, text/event-stream",
            **dict(h for h in mcp_headers("tools/call", tool) if isinstance(h, tuple)),
            **(headers or {}),
        }
        conn.request("POST", "/mcp", body=call_body(tool), headers=all_headers)
        response = conn.getresponse()
        return Reply(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ran(mesh: Mesh, since: int) -> list[tuple[str, str | None]]:
    """(tool, grant seen by the upstream) of every execution since `since`; none of them
    may have come with an Authorization header."""
    assert mesh.stack is not None
    entries = executed(mesh.stack)[since:]
    assert all(entry["authorization_present"] is False for entry in entries), entries
    return [(entry["tool"], entry["grant"]) for entry in entries]


def count(mesh: Mesh) -> int:
    assert mesh.stack is not None
    return len(executed(mesh.stack))


def assert_runs(reply: Reply, mesh: Mesh, since: int, grant: str, tool: str = GEMINI) -> None:
    assert reply.status == 200, reply
    assert reply.decided, reply
    result = reply.json()["result"]
    assert result["isError"] is False, result
    assert ran(mesh, since) == [(tool, grant)]


def assert_policy_denied(reply: Reply, mesh: Mesh, since: int) -> None:
    assert reply.status == 200 and reply.decided, reply
    result = reply.json()["result"]
    assert result["isError"] is True
    assert result["content"][0]["text"].startswith(DENIED), result
    assert "(default deny)" in result["content"][0]["text"]
    assert ran(mesh, since) == []


def assert_sidecar_401(reply: Reply, mesh: Mesh, since: int) -> None:
    assert reply.status == 401, reply
    assert reply.decided, reply  # the sidecar decided: Envoy passed the request on
    assert reply.headers["www-authenticate"].startswith('Bearer realm="mcp-authz"')
    assert reply.json()["error"]["code"] == -32001
    assert ran(mesh, since) == []


def assert_envoy_jwt_rejected(reply: Reply, mesh: Mesh, since: int, status: int = 401) -> None:
    """jwt_authn refused the request: the sidecar was never asked, nothing ran."""
    assert reply.status == status, reply
    assert not reply.decided, reply
    if status == 401:
        assert reply.headers["www-authenticate"].startswith("Bearer realm=")
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    assert error["code"] == -32001 and "JWT was rejected by the proxy" in error["message"]
    assert ran(mesh, since) == []


# -- mTLS: SPIFFE IDs ---------------------------------------------------------------------------


def test_spiffe_grant_runs_under_its_policy(mesh: Mesh) -> None:
    since = count(mesh)
    assert_runs(post(mesh, "painter"), mesh, since, "painter")
    since = count(mesh)
    openai = post(mesh, "painter", OPENAI)
    assert_policy_denied(openai, mesh, since)  # painter's policy: gemini only


def test_spiffe_grant_with_a_restrictive_policy(mesh: Mesh) -> None:
    since = count(mesh)
    assert_policy_denied(post(mesh, "sketcher"), mesh, since)


def test_unknown_spiffe_id_is_401(mesh: Mesh) -> None:
    since = count(mesh)
    reply = post(mesh, "stranger")
    assert_sidecar_401(reply, mesh, since)
    assert "client certificate" in reply.json()["error"]["message"]


@pytest.mark.parametrize(
    "client",
    [
        None,  # no client certificate at all
        "rogue-painter",  # painter's SPIFFE ID, signed by another CA
        "other-domain",  # signed by the mesh CA, but another trust domain
        "cn-only",  # painter's SPIFFE ID in the subject CN, no URI SAN
    ],
)
def test_tls_handshake_refuses_unverifiable_clients(mesh: Mesh, client: str | None) -> None:
    since = count(mesh)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        post(mesh, client)
    assert ran(mesh, since) == []


# -- JWTs verified by Envoy ---------------------------------------------------------------------


def test_verified_jwt_names_the_grant(mesh: Mesh) -> None:
    since = count(mesh)
    # stranger's certificate alone would be a 401: the JWT decides.
    assert_runs(post(mesh, "stranger", headers=bearer(mesh.token("alice"))), mesh, since, "alice")


def test_jwt_wins_over_the_client_certificate(mesh: Mesh) -> None:
    since = count(mesh)
    assert_runs(post(mesh, "painter", headers=bearer(mesh.token("alice"))), mesh, since, "alice")
    # carol's policy allows nothing; painter's certificate would have allowed gemini
    since = count(mesh)
    reply = post(mesh, "painter", headers=bearer(mesh.token("carol")))
    assert_policy_denied(reply, mesh, since)


def test_jwt_claims_grant(mesh: Mesh) -> None:
    since = count(mesh)
    token = mesh.token("bob", audience=["other", AUDIENCE], team="art", level=2)
    assert_runs(post(mesh, "stranger", headers=bearer(token)), mesh, since, "art-team")


@pytest.mark.parametrize(
    "claims",
    [
        {"team": "paint", "level": 2},  # a claim with another value
        {"level": 2},  # a required claim missing
        {"team": "art", "level": "2"},  # a claim of another type
    ],
)
def test_verified_jwt_without_a_grant_is_401_and_never_falls_back(
    mesh: Mesh, claims: dict[str, Any]
) -> None:
    since = count(mesh)
    # painter's certificate has a grant, but the verified JWT names the caller
    reply = post(mesh, "painter", headers=bearer(mesh.token("bob", **claims)))
    assert_sidecar_401(reply, mesh, since)
    assert "unknown JWT identity" in reply.json()["error"]["message"]


def test_jwt_of_an_unknown_subject_is_401(mesh: Mesh) -> None:
    since = count(mesh)
    assert_sidecar_401(post(mesh, "painter", headers=bearer(mesh.token("mallory"))), mesh, since)


@pytest.mark.parametrize(
    ("what", "status"),
    [
        ("wrong-signature", 401),
        ("expired", 401),
        ("unknown-issuer", 401),
        ("wrong-audience", 403),
        ("unsigned", 401),
        ("garbage", 401),
    ],
)
def test_jwt_rejected_by_envoy_never_reaches_sidecar_or_upstream(
    mesh: Mesh, what: str, status: int
) -> None:
    tokens = {
        "wrong-signature": lambda: mesh.token("alice", key=mesh.rogue_jwt_key),
        "expired": lambda: mesh.token("alice", expires_in=-3600),
        "unknown-issuer": lambda: mesh.token("alice", issuer="https://evil.example"),
        "wrong-audience": lambda: mesh.token("alice", audience="someone-else"),
        "unsigned": lambda: pyjwt.encode(
            {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "exp": int(time.time()) + 600},
            None,
            algorithm="none",
        ),
        "garbage": lambda: "eyJhbGciOiJSUzI1NiJ9.bm90LWpzb24.c2ln",
    }
    since = count(mesh)
    # even with a certificate that has a grant of its own
    reply = post(mesh, "painter", headers=bearer(tokens[what]()))
    assert_envoy_jwt_rejected(reply, mesh, since, status)


def test_unverified_jwt_is_only_an_unknown_bearer_token(mesh: Mesh) -> None:
    """`bearer <jwt>` (lower case) is not read by jwt_authn, so the sidecar gets it as an
    opaque token: no grant has its hash. A JWT counts only when Envoy verified it."""
    since = count(mesh)
    reply = post(mesh, "painter", headers={"Authorization": f"bearer {mesh.token('alice')}"})
    assert_sidecar_401(reply, mesh, since)
    assert "unknown bearer token" in reply.json()["error"]["message"]


# -- bearer tokens beside certificates ----------------------------------------------------------


def test_token_wins_over_the_client_certificate(mesh: Mesh) -> None:
    since = count(mesh)
    reply = post(mesh, "sketcher", headers=bearer("mesh-token-gemini"))
    assert_runs(reply, mesh, since, "tok-gemini")
    since = count(mesh)
    reply = post(mesh, "painter", headers=bearer("mesh-token-nothing"))
    assert_policy_denied(reply, mesh, since)


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not-a-known-token", "Basic cGFpbnRlcjp4", "Bearer  mesh-token-gemini", ""],
)
def test_bad_authorization_never_falls_back_to_the_certificate(
    mesh: Mesh, authorization: str
) -> None:
    since = count(mesh)
    reply = post(mesh, "painter", headers={"Authorization": authorization})
    assert_sidecar_401(reply, mesh, since)


# -- client headers that pretend to be identities -----------------------------------------------


def _forged_headers(mesh: Mesh) -> dict[str, str]:
    claims = json.dumps({"iss": ISSUER, "sub": "alice", "aud": AUDIENCE}).encode()
    payload = base64.urlsafe_b64encode(claims).decode().rstrip("=")
    painter = spiffe("painter")
    return {
        "x-forwarded-client-cert": f"By={spiffe('envoy')};Hash=00;URI={painter}",
        "x-spiffe-id": painter,
        "x-jwt-payload": payload,
        "x-jwt-claims": claims.decode(),
        # (a header named like the namespace itself, with dots, is a 400 from Envoy)
        "x-jwt-authn-metadata": json.dumps({JWT_PAYLOAD_KEY: json.loads(claims)}),
        "x-envoy-peer-metadata-id": painter,
        "x-mcp-grant": "painter",
    }


def test_identity_headers_from_the_client_grant_nothing(mesh: Mesh) -> None:
    since = count(mesh)
    reply = post(mesh, "stranger", headers=_forged_headers(mesh))
    assert_sidecar_401(reply, mesh, since)


def test_identity_headers_do_not_change_a_real_identity(mesh: Mesh) -> None:
    forged = _forged_headers(mesh)
    since = count(mesh)
    assert_policy_denied(post(mesh, "sketcher", headers=forged), mesh, since)
    since = count(mesh)
    forged["x-mcp-grant"] = "alice"
    reply = post(mesh, "painter", headers=forged)
    assert_runs(reply, mesh, since, "painter")  # the upstream saw painter, not alice


# -- the configuration file itself --------------------------------------------------------------


def _without_mesh_parts(cfg: dict[str, Any]) -> dict[str, Any]:
    """deploy/envoy-mesh.yaml minus the differences its header lists."""
    out = copy.deepcopy(cfg)
    chain = out["static_resources"]["listeners"][0]["filter_chains"][0]
    del chain["transport_socket"]
    hcm = _hcm(out)
    assert hcm.pop("forward_client_cert_details") == "SANITIZE"
    mappers = hcm["local_reply_config"]["mappers"]
    jwt_mappers = [m for m in mappers if "jwt_authn" in json.dumps(m["filter"])]
    assert len(jwt_mappers) == 1
    mappers.remove(jwt_mappers[0])
    hcm["http_filters"] = [
        f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.jwt_authn"
    ]
    ext_authz = _filter(out, "envoy.filters.http.ext_authz")
    ext_authz["metadata_context_namespaces"].remove(JWT_AUTHN_NAMESPACE)
    return out


def test_mesh_config_is_the_plain_config_plus_identity() -> None:
    mesh_cfg = load_envoy_config(MESH_CONFIG)
    assert _without_mesh_parts(mesh_cfg) == load_envoy_config(PLAIN_CONFIG)


def test_mesh_config_identity_settings() -> None:
    cfg = load_envoy_config(MESH_CONFIG)
    tls = _tls(cfg)
    assert tls["require_client_certificate"] is True
    assert tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"]
    names = [f["name"] for f in _hcm(cfg)["http_filters"]]
    # jwt_authn runs before ext_authz, so its metadata exists when the sidecar is asked
    assert names.index("envoy.filters.http.jwt_authn") < names.index("envoy.filters.http.ext_authz")
    jwt_authn = _filter(cfg, "envoy.filters.http.jwt_authn")
    for provider in jwt_authn["providers"].values():
        assert provider["payload_in_metadata"] == JWT_PAYLOAD_KEY
        assert provider["from_headers"] == [{"name": "Authorization", "value_prefix": "Bearer "}]
        assert "from_params" not in provider and "from_cookies" not in provider
    ext_authz = _filter(cfg, "envoy.filters.http.ext_authz")
    assert JWT_AUTHN_NAMESPACE in ext_authz["metadata_context_namespaces"]


@pytest.mark.processes
def test_rendered_mesh_config_passes_envoy_validate(tmp_path: Path) -> None:
    """The file as shipped names placeholder certificate paths, which `--mode validate`
    opens; a copy rendered with generated files must validate."""
    the_mesh = make_mesh(tmp_path / "pki")
    cfg = render_envoy_config(
        listen_host=LOOPBACK,
        listen_port=free_port(),
        admin_port=free_port(),
        authz_host=LOOPBACK,
        authz_port=free_port(),
        upstream_host=LOOPBACK,
        upstream_port=free_port(),
        source=MESH_CONFIG,
    )
    use_mesh_files(cfg, the_mesh)
    path = tmp_path / "envoy-mesh.yaml"
    write_envoy_config(cfg, path)
    assert yaml.safe_load(path.read_text()) == cfg
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--base-id", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
