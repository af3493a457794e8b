"""One request, and its response, through the sidecar: the orchestration around the pure
engine and response inspector, with the stores.

- `request`: `HttpRequest` and the refusals of its HTTP shape; `identity`: its grant;
- `gate`: `Authorizer.check` → `Verdict` (parse → engine → in-flight id → approval →
  counters); `parsing`: large bodies parsed off the event loop (`ParsePool`);
- `response`: `Responder`, the response phase (inspector → give-back → audit event).

No protobuf here: the edges (`authz.envoy`) translate.
"""

from authz.pipeline.gate import Authorizer, Verdict
from authz.pipeline.request import HttpRequest
from authz.pipeline.response import Responder

__all__ = ["Authorizer", "HttpRequest", "Responder", "Verdict"]
