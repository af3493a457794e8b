"""The approval webhook signed per Standard Webhooks, verified by a real receiver on loopback
with the `standardwebhooks` library, as a receiver would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import pytest
import standardwebhooks

from authz.approvals.base import ApprovalRequest
from authz.approvals.memory import MemoryApprovalStore
from authz.approvals.webhook import WebhookNotifier, webhook_id, webhook_key
from authz.config.settings import Settings, SettingsError
from authz.model import Approval
from tests.webhook_receiver import Receiver

STANDARD_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
PLAIN_SECRET = "webhook-shared-secret"


async def _approval() -> Approval:
    request = ApprovalRequest(
        grant_id="g1",
        grant_label="Agent One",
        policy="seed",
        policy_hash="ab" * 32,
        tool="image.generate.gemini",
        arguments={"prompt": "a fox"},
        rule="/tools/image.generate.gemini/approve_if/0",
        ttl_seconds=300,
        decision_id="c" * 24,
    )
    approval, _ = await MemoryApprovalStore().request(request, time.time())
    return approval


@pytest.fixture
def standard_receiver() -> Iterator[Receiver]:
    with Receiver(secret=STANDARD_SECRET) as running:
        yield running


@pytest.mark.processes
async def test_a_standard_receiver_verifies_the_post(standard_receiver: Receiver) -> None:
    results: list[str] = []
    notifier = WebhookNotifier(
        standard_receiver.url, secret=STANDARD_SECRET, on_result=results.append
    )
    approval = await _approval()
    notifier.notify(approval)
    await notifier.drain()
    assert results == ["sent"]
    (_path, headers, body) = standard_receiver.posts[0]
    # the receiver's own verification returned the payload
    assert standard_receiver.verified == [json.loads(body)]
    assert headers["webhook-id"] == webhook_id(approval.id) == f"msg_{approval.id}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 300
    assert headers["webhook-signature"].startswith("v1,")

    receiver_side = standardwebhooks.Webhook(STANDARD_SECRET)
    tampered = body.replace(b'"grant_id":"g1"', b'"grant_id":"g2"', 1)
    assert tampered != body
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        receiver_side.verify(tampered, headers)
    # another message id with the same signature: refused
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        receiver_side.verify(body, {**headers, "webhook-id": "msg_other"})
    # the signature of a timestamp moved back into the window: refused
    moved = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 60)}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        receiver_side.verify(body, moved)
    # another secret: refused
    other = standardwebhooks.Webhook("whsec_" + base64.b64encode(b"x" * 32).decode())
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        other.verify(body, headers)


@pytest.mark.processes
async def test_a_replayed_post_is_refused_for_its_old_timestamp() -> None:
    """A POST signed ten minutes ago (a capture replayed now) carries a valid signature, and
    the receiver still refuses it: the timestamp is outside the 5-minute tolerance."""
    with Receiver(secret=STANDARD_SECRET) as receiver:
        results: list[str] = []
        notifier = WebhookNotifier(
            receiver.url,
            secret=STANDARD_SECRET,
            on_result=results.append,
            clock=lambda: time.time() - 600,
        )
        notifier.notify(await _approval())
        await notifier.drain()
    assert receiver.verified == ["Message timestamp too old"]
    assert results == ["failed"]  # 401 is final: not retried
    (_path, headers, body) = receiver.posts[0]
    # the signature itself was right for that time
    message_id, stamp = headers["webhook-id"], int(headers["webhook-timestamp"])
    key = webhook_key(STANDARD_SECRET)
    signed = f"{message_id}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"


@pytest.mark.processes
async def test_retries_keep_the_id_and_sign_each_attempt() -> None:
    with Receiver(statuses=(503,), secret=STANDARD_SECRET) as receiver:
        results: list[str] = []
        notifier = WebhookNotifier(
            receiver.url, secret=STANDARD_SECRET, backoff=0.01, on_result=results.append
        )
        notifier.notify(await _approval())
        await notifier.drain()
    assert results == ["sent"]
    assert len(receiver.posts) == 2
    assert len({headers["webhook-id"] for _, headers, _ in receiver.posts}) == 1
    assert all(isinstance(payload, dict) for payload in receiver.verified)


@pytest.mark.processes
async def test_a_plain_secret_keeps_the_legacy_header_and_verifies_as_bytes() -> None:
    """A secret configured before Standard Webhooks (any string) keys both signatures with its
    UTF-8 bytes: receivers pass those bytes, or the `whsec_` form of them, to the library."""
    whsec_form = "whsec_" + base64.b64encode(PLAIN_SECRET.encode()).decode()
    with Receiver(secret=PLAIN_SECRET.encode()) as receiver:
        notifier = WebhookNotifier(receiver.url, secret=PLAIN_SECRET)
        notifier.notify(await _approval())
        await notifier.drain()
    (_path, headers, body) = receiver.posts[0]
    assert receiver.verified == [json.loads(body)]
    standardwebhooks.Webhook(whsec_form).verify(body, headers)
    legacy = hmac.new(PLAIN_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-mcp-authz-signature"] == f"sha256={legacy}"


@pytest.mark.processes
async def test_without_a_secret_id_and_timestamp_but_no_signature() -> None:
    with Receiver() as receiver:
        notifier = WebhookNotifier(receiver.url)
        approval = await _approval()
        notifier.notify(approval)
        await notifier.drain()
    (_path, headers, _body) = receiver.posts[0]
    assert headers["webhook-id"] == f"msg_{approval.id}"
    assert "webhook-timestamp" in headers
    assert "webhook-signature" not in headers and "x-mcp-authz-signature" not in headers


def test_webhook_key_of_each_secret_form() -> None:
    assert webhook_key(STANDARD_SECRET) == bytes(range(32))
    unpadded = STANDARD_SECRET.rstrip("=")
    assert webhook_key(unpadded) == bytes(range(32))
    assert webhook_key(PLAIN_SECRET) == PLAIN_SECRET.encode()
    for bad in ("whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode(), ""):
        with pytest.raises(ValueError):
            webhook_key(bad)


def test_settings_refuse_a_malformed_standard_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET", "whsec_%%%")
    with pytest.raises(SettingsError, match="MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET") as caught:
        Settings.build(config="/cfg", grpc=None, admin=None)
    assert "%%%" not in str(caught.value)  # the secret is not echoed
    monkeypatch.setenv("MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET", STANDARD_SECRET)
    settings = Settings.build(config="/cfg", grpc=None, admin=None)
    assert settings.approval_webhook_secret == STANDARD_SECRET
