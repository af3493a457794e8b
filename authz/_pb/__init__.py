"""Private protobuf/gRPC stubs generated from ../../protos by scripts/gen_protos.py.

Do not edit by hand; regenerate with ``python scripts/gen_protos.py``. Only the Envoy edge
(``authz.envoy``) imports from here.
"""
