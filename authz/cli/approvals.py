"""`mcp-authz approvals list|show|approve|deny`: a client of the sidecar's admin API (the
standard library's `urllib`, no redirects followed with the approver's token), and the tables
it prints (every value the agent chose escaped, so it cannot rewrite the screen)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_ADMIN_URL", "add_approvals_parser"]

DEFAULT_ADMIN_URL = "http://127.0.0.1:9002"


class _CliError(Exception):
    """Exit with `code` after printing `message` to stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _admin_url(value: str | None) -> str:
    url = value or os.environ.get("MCP_AUTHZ_ADMIN_URL") or DEFAULT_ADMIN_URL
    if "://" not in url:
        url = f"http://{url}"  # bare HOST:PORT
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise _CliError(2, f"--admin: expected http(s)://HOST:PORT or HOST:PORT, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _CliError(2, f"--admin: bad port in {url!r}") from None
    return url.rstrip("/")


def _admin_token(args: argparse.Namespace) -> str | None:
    if args.token is not None:
        return str(args.token).strip() or None
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise _CliError(2, f"--token-file: cannot read {args.token_file}: {exc}") from None
        if not token:
            raise _CliError(2, f"--token-file: {args.token_file} is empty")
        return token
    return os.environ.get("MCP_AUTHZ_ADMIN_TOKEN", "").strip() or None


def _call_admin(
    args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    """One request to the admin API; its JSON answer, or _CliError (1 refused, 2 unreachable)."""
    url = _admin_url(args.admin) + path
    headers = {"Accept": "application/json"}
    token = _admin_token(args)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _NO_REDIRECTS.open(request, timeout=args.timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            message = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode("utf-8", "replace").strip()[:200] or err.reason
        raise _CliError(1, f"{_printable(str(message))} (HTTP {err.code})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        where = _admin_url(args.admin)
        raise _CliError(2, f"cannot reach the admin API at {where}: {reason}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise _CliError(2, f"the admin API at {url} did not answer JSON") from None


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """The approver token goes to the admin URL given and nowhere else: a redirect is an
    error (urllib would otherwise follow it with the Authorization header)."""

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> None:
        raise urllib.error.HTTPError(
            req.full_url, code, f"redirect to {newurl} refused", headers, fp
        )


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


def _printable(text: str, *, lines: bool = False) -> str:
    """Escape control and formatting characters (terminal escapes, bidi overrides): values
    shown to an approver come from the agent and must not rewrite what the screen shows."""
    return "".join(
        f"\\u{ord(c):04x}"
        if unicodedata.category(c) in ("Cc", "Cf") and not (lines and c == "\n")
        else c
        for c in text
    )


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


_LIVE = ("pending", "approved")


def _expires_in(approval: dict[str, Any], now: float) -> str:
    if approval.get("status") not in _LIVE:
        return "-"
    expires = approval.get("expires_at")
    return _duration(float(expires) - now) if isinstance(expires, int | float) else "?"


def _status_text(approval: dict[str, Any]) -> str:
    status = str(approval.get("status", "?"))
    return f"{status} (stale)" if approval.get("stale") and status == "pending" else status


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _approval_path(approval_id: str, action: str = "") -> str:
    return "/approvals/" + urllib.parse.quote(approval_id, safe="") + action


def _run_approvals(args: argparse.Namespace) -> int:
    try:
        return int(args.approvals_func(args))
    except _CliError as exc:
        print(f"mcp-authz approvals {args.approvals_command}: {exc.message}", file=sys.stderr)
        return exc.code


_MAX_PAGES = 1000
"""Pages `approvals list` reads at most (the API answers at most 200 approvals a page)."""


def _list_pages(args: argparse.Namespace, status: str) -> dict[str, Any]:
    """Every approval of `status`, following the API's pages: {"approvals": [...], "now"}."""
    approvals: list[Any] = []
    query = {"status": status}
    answer: Any = {}
    for _page in range(_MAX_PAGES):
        answer = _call_admin(args, "GET", "/approvals?" + urllib.parse.urlencode(query))
        if not isinstance(answer, dict):
            raise _CliError(2, "the admin API answered something other than a listing")
        approvals += answer.get("approvals") or []
        cursor = answer.get("next")
        if not isinstance(cursor, str) or not cursor:
            break
        query = {"status": status, "after": cursor}
    return {"approvals": approvals, "now": answer.get("now")}


def _approvals_list(args: argparse.Namespace) -> int:
    status = "all" if args.all else (args.status or "pending")
    answer = _list_pages(args, status)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    approvals = answer["approvals"]
    if not approvals:
        print(f"no {status} approvals" if status != "all" else "no approvals")
        return 0
    now = answer.get("now")
    now = float(now) if isinstance(now, int | float) else time.time()
    rows = [["ID", "STATUS", "GRANT", "TOOL", "ARGUMENT KEYS", "EXPIRES IN"]]
    for approval in approvals:
        rows.append(
            [
                _printable(str(approval.get("id", ""))),
                _status_text(approval),
                _printable(str(approval.get("grant_id", ""))),
                _printable(str(approval.get("tool", ""))),
                _printable(",".join(str(k) for k in approval.get("argument_keys", []))) or "-",
                _expires_in(approval, now),
            ]
        )
    _print_table(rows)
    return 0


def _stamp(value: Any) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(value))


def _approvals_show(args: argparse.Namespace) -> int:
    approval = _call_admin(args, "GET", _approval_path(args.id))
    if args.json:
        print(json.dumps(approval, indent=2))
        return 0
    if not isinstance(approval, dict):
        raise _CliError(2, "the admin API answered something other than an approval")
    now = time.time()
    status = _status_text(approval)
    if approval.get("stale") and approval.get("status") == "pending":
        status += ": the policy changed since the call was held; it can only be denied"
    lines: list[tuple[str, Any]] = [
        ("id", approval.get("id")),
        ("status", status),
        ("grant", approval.get("grant_id")),
        ("grant label", approval.get("grant_label")),
        ("policy", approval.get("policy")),
        ("policy sha256", approval.get("policy_hash")),
        ("tool", approval.get("tool")),
        ("rule", approval.get("rule")),
        ("argument keys", ", ".join(str(k) for k in approval.get("argument_keys") or [])),
        ("arguments hmac", approval.get("arguments_hmac")),
        ("requested", _stamp(approval.get("requested_at"))),
        ("expires", _stamp(approval.get("expires_at"))),
        ("expires in", _expires_in(approval, now) if approval.get("status") in _LIVE else None),
        ("decided", _stamp(approval.get("decided_at"))),
        ("decided by", approval.get("decided_by")),
        ("reason", approval.get("reason")),
        ("used", _stamp(approval.get("used_at"))),
        ("decision id", approval.get("decision_id")),
    ]
    for label, value in lines:
        if value is not None and value != "":
            print(f"{label + ':':<18}{_printable(str(value))}")
    if approval.get("arguments") is None:
        print("arguments:        (no longer kept: the approval was used or has expired)")
        return 0
    print("arguments:")
    arguments = json.dumps(approval.get("arguments"), indent=2, ensure_ascii=False)
    for line in _printable(arguments, lines=True).splitlines():
        print(f"  {line}")
    return 0


def _approvals_decide(args: argparse.Namespace, *, approve: bool) -> int:
    if args.reason is not None and args.reason_words:
        raise _CliError(2, "give the reason once: --reason TEXT or as words after the id")
    reason = args.reason if args.reason is not None else " ".join(args.reason_words) or None
    if reason is None and not approve:
        raise _CliError(2, "deny needs a reason (--reason TEXT): the agent is shown it")
    body: dict[str, Any] | None = None
    if reason is not None:
        body = {"reason": reason}
    action = "approve" if approve else "deny"
    approval = _call_admin(args, "POST", _approval_path(args.id, f"/{action}"), body)
    if args.json:
        print(json.dumps(approval, indent=2))
        return 0
    verb = "approved" if approve else "denied"
    print(
        f"{verb} {_printable(str(approval.get('id')))}: "
        f"{_printable(str(approval.get('tool')))} for grant "
        f"{_printable(str(approval.get('grant_id')))} "
        f"(by {_printable(str(approval.get('decided_by')))})"
    )
    return 0


def _approvals_approve(args: argparse.Namespace) -> int:
    return _approvals_decide(args, approve=True)


def _approvals_deny(args: argparse.Namespace) -> int:
    return _approvals_decide(args, approve=False)


def _admin_client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--admin",
        "--admin-url",
        "--url",
        dest="admin",
        metavar="URL",
        help="admin API: URL or HOST:PORT "
        f"(default $MCP_AUTHZ_ADMIN_URL, else {DEFAULT_ADMIN_URL})",
    )
    tokens = common.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token",
        "--admin-token",
        dest="token",
        help="approver token (default $MCP_AUTHZ_ADMIN_TOKEN)",
    )
    tokens.add_argument("--token-file", metavar="PATH", help="read the approver token from PATH")
    common.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    return common


def add_approvals_parser(sub: Any) -> None:
    """The `approvals` command and its subcommands, under the CLI's subparsers `sub`."""
    common = _admin_client_options()
    approvals = sub.add_parser(
        "approvals", help="list, show, approve and deny held tool calls (admin API client)"
    )
    approvals.set_defaults(func=_run_approvals)
    approvals_sub = approvals.add_subparsers(dest="approvals_command", required=True)
    alist = approvals_sub.add_parser("list", parents=[common], help="list approvals")
    which = alist.add_mutually_exclusive_group()
    which.add_argument(
        "--status",
        choices=["pending", "approved", "denied", "used", "expired", "all"],
        help="which approvals (default pending)",
    )
    which.add_argument("--all", action="store_true", help="every approval the store keeps")
    alist.set_defaults(approvals_func=_approvals_list)
    ashow = approvals_sub.add_parser("show", parents=[common], help="show one approval")
    ashow.add_argument("id")
    ashow.set_defaults(approvals_func=_approvals_show)
    aapprove = approvals_sub.add_parser("approve", parents=[common], help="approve a held call")
    aapprove.add_argument("id")
    aapprove.add_argument("--reason", help="why (optional)")
    aapprove.add_argument("reason_words", nargs="*", metavar="REASON", help=argparse.SUPPRESS)
    aapprove.set_defaults(approvals_func=_approvals_approve)
    adeny = approvals_sub.add_parser("deny", parents=[common], help="deny a held call")
    adeny.add_argument("id")
    adeny.add_argument("--reason", help="why (required; shown to the agent)")
    adeny.add_argument(
        "reason_words", nargs="*", metavar="REASON", help="the reason, instead of --reason"
    )
    adeny.set_defaults(approvals_func=_approvals_deny)
