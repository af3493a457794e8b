"""Envoy's protocols, side by side; protobuf stops here.

- `grpc_authz`: ext_authz v3 over gRPC (CheckRequest → `HttpRequest`, `Verdict` →
  CheckResponse) and its servicer;
- `extproc`: ext_proc v3, the response phase's stream per response, and its servicer;
- `denial`: a denied `Verdict` as the client sees it, shared by every transport.
"""

from authz.envoy.denial import HttpDenial, denial
from authz.envoy.extproc import ExternalProcessorService, add_processor_service
from authz.envoy.grpc_authz import AuthorizationService, add_authorization_service

__all__ = [
    "AuthorizationService",
    "ExternalProcessorService",
    "HttpDenial",
    "add_authorization_service",
    "add_processor_service",
    "denial",
]
