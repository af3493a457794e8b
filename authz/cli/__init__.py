"""The `mcp-authz` command line: its commands (`commands`) and the admin API client behind
`mcp-authz approvals` (`approvals`)."""

from authz.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
