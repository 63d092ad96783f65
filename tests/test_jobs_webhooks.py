"""Outgoing webhooks: the final job POSTed to the user's URL, signed in the Standard Webhooks style
(webhook-id, webhook-timestamp, webhook-signature: v1,base64(HMAC-SHA256(secret, id.timestamp.body))),
retried with backoff under one stable delivery id until the receiver takes it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from _accounts import wait_until
from conftest import fal_with
from hybridgate.testing.procs import Proc, free_port, start_gateway
from test_jobs import GW, IMAGE, MASTER, fal_backend, gw_config

GOT: list[tuple[dict[str, str], bytes, int]] = []
FAIL_FIRST = 2


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        status = 500 if len(GOT) < FAIL_FIRST else 204
        GOT.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    GOT.clear()
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/jobs"
    server.shutdown()


@pytest.fixture
def fal(fal_process: Proc) -> Proc:
    return fal_with(fal_process, queue_s=0.1, run_s=0.1)


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest("v1," + expected, s) for s in headers["webhook-signature"].split())


def test_final_job_delivered_signed_and_retried(fal: Proc, receiver: str, tmp_path: Path) -> None:
    port = free_port()
    p = start_gateway(
        gw_config(tmp_path, [fal_backend(fal)], port),
        port=port,
        env={"HYBRIDGATE_MASTER_KEY": MASTER},
        workdir=tmp_path,
    )
    try:
        gw = GW(p)
        k = gw.key("hooked")
        job = gw.job(k, {**IMAGE, "webhook_url": receiver, "metadata": {"order": "42"}}).json()
        secret = job["webhook_secret"]
        assert secret.startswith("whsec_")
        done = gw.wait(k, job["id"])
        assert done["status"] == "succeeded"
        wait_until(lambda: len(GOT) >= 3, 20, "the third delivery attempt")
        ids = {h["webhook-id"] for h, _, _ in GOT}
        assert len(ids) == 1 and ids.pop().startswith("msg_")  # one stable id across retries
        assert [s for _, _, s in GOT[:3]] == [500, 500, 204]
        bodies = {b for _, b, _ in GOT}
        assert len(bodies) == 1  # the same bytes every time
        for h, b, _ in GOT:
            assert verify(secret, h, b)
            assert not verify(secret, h, b.replace(b"succeeded", b"failed"))
        event = json.loads(GOT[0][1])
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job["id"]
        assert event["data"]["metadata"] == {"order": "42"} and len(event["data"]["artifacts"]) == 2
        # Delivered: its row says so (so the delivery loop picks it no more), after exactly three tries.
        import sqlite3

        def delivery() -> Any:
            with sqlite3.connect(tmp_path / "hg.db") as db:
                return db.execute(
                    "SELECT delivered_at, attempts, failed_at FROM webhook_deliveries WHERE job_id = ?",
                    (job["id"],),
                ).fetchone()

        row = wait_until(lambda: (r := delivery()) and r[0] is not None and r, 10, "the delivery recorded")
        assert row[1] == 3 and row[2] is None
        assert len(GOT) == 3
    finally:
        p.stop()
