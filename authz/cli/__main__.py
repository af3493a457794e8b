"""`python -m authz.cli`: the `mcp-authz` command line."""

import sys

from authz.cli.commands import main

__all__: list[str] = []

sys.exit(main())
