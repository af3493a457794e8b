"""The whole standard layout on one machine, for the demo, the end-to-end tests and the
benchmarks: launching the processes (`stack`), what tests do to them (`faults`), the Envoy
configuration rendered for local ports (`envoy_config`), and `mcp-authz demo` (`demo`)."""

from authz.devstack.stack import LOOPBACK, Ports, Stack, StackError, free_port, reserve_port

__all__ = ["LOOPBACK", "Ports", "Stack", "StackError", "free_port", "reserve_port"]
