#!/usr/bin/env python3
"""A fast stand-in for the EBS direct APIs' write path, for benchmarks only.

Usage: ebs_standin.py --listen PORT --log FILE [--latency-ms MS]
                      [--complete-after-ms MS]

moto (one Python process handling every request in turn, plus the recording
proxy in front of it) takes longer per PutSnapshotBlock than the client
does, so against moto the client's own cost cannot be seen. This server
answers only what `imgforge upload --no-register` calls, and checks what
EBS checks:

- StartSnapshot (POST /snapshots): a new pending snapshot; a ClientToken
  seen before answers that token's snapshot, as EBS does.
- PutSnapshotBlock (PUT /snapshots/ID/blocks/N): the body must be 524288
  bytes, its SHA-256 must equal x-amz-Checksum (base64) and, unless
  UNSIGNED-PAYLOAD, x-amz-content-sha256 (hex, what SigV4 signs); else HTTP
  400 ValidationException.
- CompleteSnapshot (POST /snapshots/completion/ID): x-amz-ChangedBlocksCount
  must equal the blocks written and x-amz-Checksum the LINEAR aggregate
  (SHA-256 of the blocks' digests in ascending index); the snapshot is then
  `completed` after --complete-after-ms (default 0; real EBS takes seconds
  to minutes, which is not the client's time: a delay here shows how soon
  after it the client notices).
- EC2 DescribeSnapshots and DeleteSnapshot (query protocol) for these
  snapshots.

Anything else answers HTTP 400 naming the operation, so a benchmark that
calls more fails loudly instead of measuring something else. Signatures are
not checked. --latency-ms delays every answer by that much (a far endpoint),
each request in its own thread, so requests in flight overlap as on a real
link. Every request is one JSON line in --log (as tests/support/aws_proxy.py
writes them): `operation`, `time` (when its body had arrived), `answered`,
`status`.
Stdlib only.
"""

import argparse
import base64
import hashlib
import http
import json
import re
import socketserver
import sys
import threading
import time
import urllib.parse
import uuid

BLOCK_SIZE = 524288
OWNER = "123456789012"


class Snapshot:
    def __init__(self, snapshot_id, volume_size, description):
        self.snapshot_id = snapshot_id
        self.volume_size = volume_size
        self.description = description
        self.started = time.time()
        self.completes_at = None  # set by CompleteSnapshot
        self.blocks = {}  # index -> raw SHA-256 digest
        self.lock = threading.Lock()

    @property
    def state(self):
        if self.completes_at is None or time.time() < self.completes_at:
            return "pending"
        return "completed"


class Handler(socketserver.StreamRequestHandler):
    """HTTP/1.1 with keep-alive, parsed by hand: http.server's header parser
    (the email package) costs more CPU per request than the rest of a block,
    and that CPU is taken from the client on the same machine."""

    # Headers and body go out in one write; no Nagle delay on small answers.
    disable_nagle_algorithm = True
    rbufsize = 1 << 16
    config = None  # set in main()
    snapshots = {}
    tokens = {}
    state_lock = threading.Lock()
    log_lock = threading.Lock()
    log_file = None

    def handle(self):
        while self.read_request():
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            if len(body) != length:
                return
            received = time.time()
            operation, (status, headers, payload) = self.dispatch(body)
            if self.config.latency_ms:
                # What a far endpoint adds, on top of the work done here.
                time.sleep(self.config.latency_ms / 1000)
            lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
            lines += [f"{k}: {v}" for k, v in headers]
            lines += [f"Content-Length: {len(payload)}", "", ""]
            self.wfile.write("\r\n".join(lines).encode() + payload)
            entry = {"time": received, "answered": time.time(), "operation": operation, "status": status}
            with self.log_lock:
                self.log_file.write(json.dumps(entry) + "\n")
                self.log_file.flush()
            if self.headers.get("connection", "").lower() == "close":
                return

    def read_request(self):
        """The request line and headers (names lower-cased); False at the
        connection's end."""
        line = self.rfile.readline(65537)
        while line in (b"\r\n", b"\n"):
            line = self.rfile.readline(65537)
        if not line:
            return False
        self.command, self.path, _ = line.decode("latin-1").split(" ", 2)
        self.headers = {}
        while True:
            header = self.rfile.readline(65537)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if self.headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def dispatch(self, body):
        path = self.path.split("?", 1)[0]
        if self.command == "POST" and path == "/snapshots":
            return "StartSnapshot", self.start_snapshot(body)
        match = re.fullmatch(r"/snapshots/([^/]+)/blocks/(\d+)", path)
        if self.command == "PUT" and match:
            return "PutSnapshotBlock", self.put_block(match.group(1), int(match.group(2)), body)
        match = re.fullmatch(r"/snapshots/completion/([^/]+)", path)
        if self.command == "POST" and match:
            return "CompleteSnapshot", self.complete(match.group(1))
        if self.command == "POST" and path == "/":
            params = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
            action = params.get("Action", ["?"])[0]
            if action == "DescribeSnapshots":
                return action, self.describe(params)
            if action == "DeleteSnapshot":
                return action, self.delete(params.get("SnapshotId", [""])[0])
            return action, ec2_error("InvalidAction", f"the EBS stand-in does not answer {action}")
        return f"{self.command} {path}", ebs_error(400, "ValidationException", "not answered by the EBS stand-in")

    def start_snapshot(self, body):
        request = json.loads(body or b"{}")
        with self.state_lock:
            token = request.get("ClientToken")
            snapshot = self.snapshots.get(self.tokens.get(token)) if token else None
            if snapshot is None:
                snapshot_id = "snap-" + uuid.uuid4().hex[:17]
                snapshot = Snapshot(snapshot_id, request["VolumeSize"], request.get("Description", ""))
                self.snapshots[snapshot_id] = snapshot
                if token:
                    self.tokens[token] = snapshot_id
        answer = {
            "SnapshotId": snapshot.snapshot_id,
            "OwnerId": OWNER,
            "Status": snapshot.state,
            "StartTime": snapshot.started,
            "VolumeSize": snapshot.volume_size,
            "BlockSize": BLOCK_SIZE,
            "Description": snapshot.description,
            "Tags": request.get("Tags", []),
        }
        return 201, [("Content-Type", "application/json")], json.dumps(answer).encode()

    def put_block(self, snapshot_id, index, body):
        snapshot = self.snapshots.get(snapshot_id)
        if snapshot is None or snapshot.completes_at is not None:
            return ebs_error(404, "ResourceNotFoundException", f"no pending snapshot {snapshot_id}")
        if len(body) != BLOCK_SIZE or self.headers.get("x-amz-data-length") != str(BLOCK_SIZE):
            return ebs_error(400, "ValidationException", f"block {index}: {len(body)} bytes, not {BLOCK_SIZE}")
        digest = hashlib.sha256(body).digest()
        if self.headers.get("x-amz-checksum") != base64.b64encode(digest).decode():
            return ebs_error(400, "ValidationException", f"block {index}: x-amz-Checksum does not match the data")
        signed = self.headers.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        if signed != "UNSIGNED-PAYLOAD" and signed != digest.hex():
            return ebs_error(400, "ValidationException", f"block {index}: x-amz-content-sha256 does not match")
        with snapshot.lock:
            snapshot.blocks[index] = digest
        headers = [
            ("x-amz-Checksum", self.headers["x-amz-checksum"]),
            ("x-amz-Checksum-Algorithm", "SHA256"),
        ]
        return 201, headers, b""

    def complete(self, snapshot_id):
        snapshot = self.snapshots.get(snapshot_id)
        if snapshot is None:
            return ebs_error(404, "ResourceNotFoundException", f"no snapshot {snapshot_id}")
        with snapshot.lock:
            count = int(self.headers.get("x-amz-changedblockscount", "-1"))
            if count != len(snapshot.blocks):
                return ebs_error(
                    400, "ValidationException", f"ChangedBlocksCount {count}, {len(snapshot.blocks)} written"
                )
            checksum = self.headers.get("x-amz-checksum")
            if checksum is not None:
                aggregate = hashlib.sha256(b"".join(d for _, d in sorted(snapshot.blocks.items()))).digest()
                if checksum != base64.b64encode(aggregate).decode():
                    return ebs_error(400, "ValidationException", "the aggregate checksum does not match")
            if snapshot.completes_at is None:
                snapshot.completes_at = time.time() + self.config.complete_after_ms / 1000
        answer = {"Status": snapshot.state}
        return 202, [("Content-Type", "application/json")], json.dumps(answer).encode()

    def describe(self, params):
        items = []
        for key, values in sorted(params.items()):
            if not key.startswith("SnapshotId."):
                continue
            snapshot = self.snapshots.get(values[0])
            if snapshot is None:
                return ec2_error("InvalidSnapshot.NotFound", f"The snapshot '{values[0]}' does not exist.")
            started = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(snapshot.started))
            items.append(
                f"<item><snapshotId>{snapshot.snapshot_id}</snapshotId><volumeId>vol-ffffffff</volumeId>"
                f"<status>{snapshot.state}</status><startTime>{started}</startTime>"
                f"<progress>{'100%' if snapshot.state == 'completed' else '0%'}</progress>"
                f"<ownerId>{OWNER}</ownerId><volumeSize>{snapshot.volume_size}</volumeSize>"
                f"<encrypted>false</encrypted></item>"
            )
        payload = (
            '<DescribeSnapshotsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            f"<requestId>standin</requestId><snapshotSet>{''.join(items)}</snapshotSet>"
            "</DescribeSnapshotsResponse>"
        )
        return 200, [("Content-Type", "text/xml")], payload.encode()

    def delete(self, snapshot_id):
        with self.state_lock:
            if self.snapshots.pop(snapshot_id, None) is None:
                return ec2_error("InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist.")
        payload = (
            '<DeleteSnapshotResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            "<requestId>standin</requestId><return>true</return></DeleteSnapshotResponse>"
        )
        return 200, [("Content-Type", "text/xml")], payload.encode()


def ebs_error(status, code, message):
    headers = [("x-amzn-ErrorType", code), ("Content-Type", "application/json")]
    return status, headers, json.dumps({"message": message}).encode()


def ec2_error(code, message):
    payload = (
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>standin</RequestID></Response>"
    )
    return 400, [("Content-Type", "text/xml")], payload.encode()


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # 64 connections opened at once must not overflow the accept queue.
    request_queue_size = 512


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--complete-after-ms", type=int, default=0)
    Handler.config = parser.parse_args()
    Handler.log_file = open(Handler.config.log, "a")
    server = Server(("127.0.0.1", Handler.config.listen), Handler)
    print(f"EBS stand-in listening on 127.0.0.1:{Handler.config.listen}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
