#!/usr/bin/env python3
"""A recording, fault-injecting HTTP proxy between an AWS client and moto.

Usage: aws_proxy.py --listen PORT --upstream PORT --log FILE
                    [--throttle R] [--server-error R] [--drop R] [--access-denied R]
                    [--delay-ms MS] [--snapshot-state STATE] [--start-status STATUS]
                    [--fail OPERATION@REGION]... [--image-state STATE@REGION]
                    [--latency-ms MS] [--seed S]

Every request becomes one JSON line in --log, written when its answer is
sent: the operation (EC2 `Action`, or the EBS direct API named from the
method and path), the EC2 query parameters, the StartSnapshot JSON body, the
block index and checksum headers of PutSnapshotBlock, the status answered
and the fault injected (null when the request reached moto).

Faults hit only PutSnapshotBlock, each with its own probability:
--throttle answers 429 ThrottlingException (header x-amzn-ErrorType),
--server-error answers 500 InternalServerException, --drop closes the
connection without an answer, --access-denied answers 403
AccessDeniedException (which a client must not retry). --delay-ms slows every PutSnapshotBlock down
(to make an upload long enough to kill halfway). --snapshot-state rewrites
the state in every DescribeSnapshots answer (e.g. `error`, which moto never
reports); --start-status rewrites the Status StartSnapshot answers (e.g.
`completed`, as EBS answers a ClientToken whose snapshot is complete).

Every entry also names the `region` and `service` of the request's SigV4
signing scope, so a test can tell which region a call went to. SSM (JSON
protocol, header X-Amz-Target) is recorded with its operation and `body`.

EnableImageDeprecation is answered here, never forwarded: moto 5.2 answers
it with HTTP 500 NotImplemented. The proxy answers what EC2 answers
(`<return>true</return>`) and records the request (`answered_by_proxy`), so
tests assert on what was sent. --fail OPERATION@REGION answers that EC2 or
SSM operation in that region with HTTP 400 UnauthorizedOperation (a failure
no client retries), to make one region of a publish fail. --image-state
STATE@REGION rewrites the state in every DescribeImages answer for that
region (e.g. `pending`, which moto's copies never are).

Enable/DisableImageDeregistrationProtection are answered here too (moto 5.2
does not implement them): the proxy remembers each image's state, adds it
to DescribeImages answers (`deregistrationProtection`, as EC2 does) and
refuses DeregisterImage of a protected image as EC2 does.
--latency-ms adds that much to every request before it is forwarded (a
far endpoint, as seen from a CI runner outside AWS): tests/bench/upload-latency.sh.
Stdlib only.
"""

import argparse
import http.client
import http.server
import json
import random
import re
import socketserver
import sys
import threading
import time
import urllib.parse

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def ebs_operation(method, path):
    path = path.split("?", 1)[0]
    if method == "POST" and path == "/snapshots":
        return "StartSnapshot"
    if method == "POST" and re.fullmatch(r"/snapshots/completion/[^/]+", path):
        return "CompleteSnapshot"
    if method == "PUT" and re.fullmatch(r"/snapshots/[^/]+/blocks/\d+", path):
        return "PutSnapshotBlock"
    if method == "GET" and re.fullmatch(r"/snapshots/[^/]+/blocks/\d+", path):
        return "GetSnapshotBlock"
    if method == "GET" and re.fullmatch(r"/snapshots/[^/]+/blocks", path):
        return "ListSnapshotBlocks"
    if method == "GET" and re.fullmatch(r"/snapshots/[^/]+/changedblocks", path):
        return "ListChangedBlocks"
    return None


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    config = None  # set in main()
    log_lock = threading.Lock()
    rng_lock = threading.Lock()
    local = threading.local()
    protected = {}  # image id -> deregistrationProtection state

    def log_message(self, fmt, *args):  # quiet
        pass

    def record(self, entry):
        with self.log_lock:
            with open(self.config.log, "a") as log:
                log.write(json.dumps(entry) + "\n")

    def upstream(self):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.config.upstream, timeout=120)
            self.local.conn = conn
        return conn

    def forward(self, body):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        headers["Content-Length"] = str(len(body))
        for attempt in range(2):
            conn = self.upstream()
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.getheaders(), response.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 1:
                    raise

    def answer(self, status, headers, body):
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in HOP_HEADERS:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def choose_fault(self):
        c = self.config
        with self.rng_lock:
            roll = c.rng.random()
        if roll < c.throttle:
            return "throttle"
        if roll < c.throttle + c.server_error:
            return "server-error"
        if roll < c.throttle + c.server_error + c.drop:
            return "drop"
        if roll < c.throttle + c.server_error + c.drop + c.access_denied:
            return "access-denied"
        return None

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        operation = ebs_operation(self.command, self.path)
        entry = {"time": time.time(), "method": self.command, "path": self.path}
        scope = re.search(r"Credential=[^/]+/\d+/([^/]+)/([^/]+)/", self.headers.get("Authorization", ""))
        entry["region"], entry["service"] = (scope.group(1), scope.group(2)) if scope else (None, None)
        target = self.headers.get("X-Amz-Target")
        if operation is None and target:
            entry["operation"] = target.rsplit(".", 1)[-1]
            entry["body"] = json.loads(body or b"{}")
        elif operation is None:
            params = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            params = {k: v[0] if len(v) == 1 else v for k, v in params.items()}
            entry["operation"] = params.get("Action")
            entry["params"] = params
        else:
            entry["operation"] = operation
            entry["headers"] = {
                k.lower(): v
                for k, v in self.headers.items()
                if k.lower().startswith("x-amz-")
                and k.lower() not in ("x-amz-date", "x-amz-security-token", "x-amz-user-agent")
            }
            if operation == "StartSnapshot":
                entry["body"] = json.loads(body or b"{}")
            if operation == "PutSnapshotBlock":
                entry["block_index"] = int(self.path.split("?")[0].rsplit("/", 1)[1])
                entry["checksum"] = self.headers.get("x-amz-Checksum")
                entry["data_length"] = self.headers.get("x-amz-Data-Length")
                entry["body_length"] = len(body)

        fault = self.choose_fault() if operation == "PutSnapshotBlock" else None
        entry["fault"] = fault
        if f"{entry['operation']}@{entry['region']}" in self.config.fail:
            entry["fault"] = "fail"
            entry["status"] = 400
            self.record(entry)
            if target:
                payload = json.dumps({"__type": "UnauthorizedOperation", "message": "injected failure"}).encode()
                headers = [("x-amzn-ErrorType", "UnauthorizedOperation"), ("Content-Type", "application/x-amz-json-1.1")]
            else:
                payload = (
                    "<Response><Errors><Error><Code>UnauthorizedOperation</Code>"
                    f"<Message>injected failure of {entry['operation']} in {entry['region']}</Message>"
                    "</Error></Errors><RequestID>proxy</RequestID></Response>"
                ).encode()
                headers = [("Content-Type", "text/xml")]
            self.answer(400, headers, payload)
            return
        if entry["operation"] == "EnableImageDeprecation":
            entry["status"] = 200
            entry["answered_by_proxy"] = True
            self.record(entry)
            payload = (
                '<EnableImageDeprecationResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                "<requestId>imgforge-test-proxy</requestId><return>true</return>"
                "</EnableImageDeprecationResponse>"
            ).encode()
            self.answer(200, [("Content-Type", "text/xml")], payload)
            return
        if self.config.latency_ms:
            time.sleep(self.config.latency_ms / 1000)
        if self.deregistration_protection(entry):
            return
        if operation == "PutSnapshotBlock" and self.config.delay_ms:
            time.sleep(self.config.delay_ms / 1000)
        if fault == "drop":
            entry["status"] = None
            self.record(entry)
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            return
        if fault in ("throttle", "server-error", "access-denied"):
            code, status = {
                "throttle": ("ThrottlingException", 429),
                "server-error": ("InternalServerException", 500),
                "access-denied": ("AccessDeniedException", 403),
            }[fault]
            payload = json.dumps({"message": f"injected {code}"}).encode()
            entry["status"] = status
            self.record(entry)
            self.answer(status, [("x-amzn-ErrorType", code), ("Content-Type", "application/json")], payload)
            return
        status, headers, payload = self.forward(body)
        if entry["operation"] == "StartSnapshot" and self.config.start_status:
            answer = json.loads(payload)
            answer["Status"] = self.config.start_status
            payload = json.dumps(answer).encode()
        if entry["operation"] == "DescribeSnapshots" and self.config.snapshot_state:
            state = self.config.snapshot_state.encode()
            payload = re.sub(rb"<status>[a-z]+</status>", b"<status>" + state + b"</status>", payload)
            entry["rewritten_state"] = self.config.snapshot_state
        if entry["operation"] == "DescribeImages":
            for image_id, state in list(self.protected.items()):
                payload = payload.replace(
                    f"<imageId>{image_id}</imageId>".encode(),
                    f"<imageId>{image_id}</imageId><deregistrationProtection>{state}"
                    "</deregistrationProtection>".encode(),
                )
            for rule in self.config.image_state:
                state, region = rule.split("@", 1)
                if region == entry["region"]:
                    payload = re.sub(
                        rb"<imageState>[a-z]+</imageState>",
                        b"<imageState>" + state.encode() + b"</imageState>",
                        payload,
                    )
                    entry["rewritten_state"] = state
        entry["status"] = status
        self.record(entry)
        self.answer(status, headers, payload)

    def deregistration_protection(self, entry):
        """Answers what moto lacks; True when the request was answered."""
        operation = entry["operation"]
        params = entry.get("params") or {}
        image_id = params.get("ImageId")
        if operation == "EnableImageDeregistrationProtection":
            cooldown = params.get("WithCooldown") == "true"
            self.protected[image_id] = "enabled-with-cooldown" if cooldown else "enabled-without-cooldown"
            element, value = "return", "enabled"
        elif operation == "DisableImageDeregistrationProtection":
            self.protected.pop(image_id, None)
            element, value = "return", "disabled"
        elif operation == "DeregisterImage" and image_id in self.protected:
            entry["status"] = 400
            entry["answered_by_proxy"] = True
            self.record(entry)
            payload = (
                "<Response><Errors><Error><Code>InvalidParameterValue</Code>"
                f"<Message>Image {image_id} has deregistration protection enabled</Message>"
                "</Error></Errors><RequestID>proxy</RequestID></Response>"
            ).encode()
            self.answer(400, [("Content-Type", "text/xml")], payload)
            return True
        else:
            return False
        entry["status"] = 200
        entry["answered_by_proxy"] = True
        self.record(entry)
        payload = (
            f'<{operation}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            f"<requestId>imgforge-test-proxy</requestId><{element}>{value}</{element}>"
            f"</{operation}Response>"
        ).encode()
        self.answer(200, [("Content-Type", "text/xml")], payload)
        return True

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--throttle", type=float, default=0.0)
    parser.add_argument("--server-error", type=float, default=0.0)
    parser.add_argument("--drop", type=float, default=0.0)
    parser.add_argument("--access-denied", type=float, default=0.0)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--snapshot-state", default=None)
    parser.add_argument("--start-status", default=None)
    parser.add_argument("--fail", action="append", default=[])
    parser.add_argument("--image-state", action="append", default=[])
    parser.add_argument("--seed", type=int, default=1)
    config = parser.parse_args()
    config.rng = random.Random(config.seed)
    Proxy.config = config
    server = Server(("127.0.0.1", config.listen), Proxy)
    print(f"listening on 127.0.0.1:{config.listen}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
