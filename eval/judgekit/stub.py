"""A loopback OpenAI-compatible chat server that misbehaves on request.

Used by the tests and by eval/benchmarks/judge_latency.py: it answers
``POST /v1/chat/completions`` on 127.0.0.1 after ``latency`` seconds, and the first requests
can be told to fail (``faults``) so that retries, Retry-After and resume are exercised without
a network or a bill. It counts what a real provider would charge for: every 200 reply, per
distinct request (``billed``).

Fault actions, consumed in arrival order, one per request:
  "429"  rate limited, with a Retry-After of ``retry_after`` seconds
  "500"  server error
  "401"  authentication refused (a bad key)
  "slow" a normal reply after ``slow_latency`` seconds
  "hang" no reply: wait ``hang_seconds`` and close the connection (never billed)
  "ok"   a normal reply
  "notjson"    a 200 reply whose body is not JSON (a proxy's HTML page)
  "nochoices"  a 200 JSON reply without ``choices``
  "empty"      a 200 reply whose message content is null
Malformed 200 replies are counted in ``malformed``, not in ``billed``.
With ``bill_limit`` set, requests after that many billed replies are held (unbilled) until
``open_gate()`` drops them: a test can kill its client knowing exactly what was paid for.
"""

import collections
import hashlib
import http.server
import json
import threading
import time


def default_reply(messages):
    """A deterministic reply readable as both verdict shapes: a score pair on the first line
    and a class on the last, both derived from the request."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest()
    first, second, verdict = 1 + digest[0] % 10, 1 + digest[1] % 10, 1 + digest[2] % 3
    return f"{first} {second}\nStub review: both answers were read.\n{verdict}"


def request_digest(body):
    """What identifies a request for billing: the model and the messages."""
    key = json.dumps({"model": body.get("model"), "messages": body.get("messages")}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


class StubServer:
    """Start with ``with StubServer(...) as stub:``; point clients at ``stub.base_url``."""

    def __init__(self, latency=0.0, faults=(), retry_after=0.1, slow_latency=0.5, hang_seconds=2.0,
                 reply=default_reply, bill_limit=None):
        self.latency = latency
        self.retry_after = retry_after
        self.slow_latency = slow_latency
        self.hang_seconds = hang_seconds
        self.reply = reply
        self.bill_limit = bill_limit
        self._faults = collections.deque(faults)
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self.requests = 0
        self.statuses = collections.Counter()
        self.billed = collections.Counter()  # request digest -> 200 replies sent
        self.malformed = 0  # malformed 200 replies sent
        self.authorizations = set()
        self.bodies = []  # every request body received, in arrival order
        self._server = None
        self._thread = None

    @property
    def base_url(self):
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def billed_total(self):
        return sum(self.billed.values())

    def open_gate(self):
        """Lift the bill limit; requests held by it are dropped without a reply."""
        with self._lock:
            self.bill_limit = None
        self._gate.set()

    def _next_action(self):
        with self._lock:
            self.requests += 1
            return self._faults.popleft() if self._faults else "ok"

    def _may_bill(self, digest):
        """Reserve a billed reply unless the bill limit is reached; False means wait."""
        with self._lock:
            if self.bill_limit is not None and self.billed_total >= self.bill_limit:
                return False
            self.billed[digest] += 1
            return True

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self):
        self._gate.set()
        self._server.shutdown()
        self._server.server_close()


def _completion(body, text, number):
    words = sum(len(m.get("content", "").split()) for m in body.get("messages", []))
    return {
        "id": f"chatcmpl-stub-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "stub"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": words, "completion_tokens": len(text.split()),
                  "total_tokens": words + len(text.split())},
    }


def _without_choices(body):
    reply = _completion(body, "", 0)
    del reply["choices"]
    return (reply,)


def _null_content(body):
    reply = _completion(body, "", 0)
    reply["choices"][0]["message"]["content"] = None
    return (reply,)


# Fault action -> (payload, headers, content type) of a 200 reply a judge cannot use.
MALFORMED_REPLIES = {
    "notjson": lambda body: ("<html><body>502 Bad Gateway</body></html>", (), "text/html"),
    "nochoices": _without_choices,
    "empty": _null_content,
}


def _make_handler(stub):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test and benchmark output clean
            pass

        def _send(self, status, payload, headers=(), content_type="application/json"):
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            with stub._lock:
                stub.statuses[status] += 1

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with stub._lock:
                stub.authorizations.add(self.headers.get("Authorization", ""))
                stub.bodies.append(body)
            if not self.path.rstrip("/").endswith("/chat/completions"):
                return self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            action = stub._next_action()
            if action == "429":
                return self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                                  [("Retry-After", f"{stub.retry_after:g}")])
            if action == "500":
                return self._send(500, {"error": {"message": "internal error", "type": "server_error"}})
            if action == "401":
                # Echoes the key, as some servers do, so that tests catch a client printing bodies.
                echoed = self.headers.get("Authorization", "")
                return self._send(401, {"error": {"message": f"Incorrect API key provided: {echoed}",
                                                  "type": "invalid_request_error"}})
            if action in MALFORMED_REPLIES:
                with stub._lock:
                    stub.malformed += 1
                return self._send(200, *MALFORMED_REPLIES[action](body))
            if action == "hang":
                time.sleep(stub.hang_seconds)
                self.close_connection = True
                return None
            time.sleep(stub.slow_latency if action == "slow" else stub.latency)
            digest = request_digest(body)
            if not stub._may_bill(digest):
                stub._gate.wait()  # held past the bill limit; dropped unbilled once released
                self.close_connection = True
                return None
            return self._send(200, _completion(body, stub.reply(body.get("messages", [])), stub.requests))

    return Handler
