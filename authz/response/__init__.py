"""The response phase, pure (sans-IO, synchronous, like the engine): what the MCP server
answered, and what the client gets to see.

- `inspector`: `ResponseInspector`, one response from its headers to its end, and its
  `ResponseReport`;
- `listing`: the listings cut (`filter_listing`, `ListingScanner` over the bound);
- `sse`: server-sent events framing; `jsonrpc`: ids, answers, the withheld error;
- `evidence`: whether a call that took quota can be shown not to have run.
"""

from authz.response.inspector import (
    MAX_HELD_BYTES,
    Plan,
    ResponseContext,
    ResponseInspector,
    ResponseReport,
)

__all__ = ["MAX_HELD_BYTES", "Plan", "ResponseContext", "ResponseInspector", "ResponseReport"]
