"""google.rpc.Status for the Envoy stubs (from scripts/gen_protos.py; do not edit).

``google/rpc/status.proto`` is also shipped, pre-generated, by googleapis-common-protos (module
``google.rpc.status_pb2``). Two different serializations of one .proto file name in the default
descriptor pool fail with "duplicate file name google/rpc/status.proto", and their copy is not
byte-identical to ours (e.g. googleapis-common-protos 1.76 dropped ``cc_enable_arenas``). So: if
that package is installed, use its module (it is then the only registration); otherwise use our
copy generated from protos/google/rpc/status.proto. Both define the same ``google.rpc.Status``.
"""

try:
    from google.rpc.status_pb2 import DESCRIPTOR, Status
except ModuleNotFoundError:
    from authz._pb.google.rpc._vendored_status_pb2 import DESCRIPTOR, Status

__all__ = ["DESCRIPTOR", "Status"]
