"""ImageGen MCP server (Python, MCP SDK v2) used as the upstream behind Envoy + mcp-authz."""

__version__ = "0.1.0"

__all__ = ["__version__"]
