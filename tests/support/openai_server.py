"""A real OpenAI-compatible chat-completions server on loopback, for tests: scripted or computed replies.

    server = OpenAIServer(responder=lambda body: "hello").start()
    server.script(Reply(status=500), Reply(delay_s=2.0), Reply(content='{"score": 3}'))
    ... OpenAIBackend("m", server.base_url) ...
    server.requests      # every request: body, headers, start/end times
    server.max_in_flight # the most requests it was handling at once
    server.stop()

It is http.server's ThreadingHTTPServer on 127.0.0.1, port 0 (one thread per connection), speaking
POST /v1/chat/completions with the OpenAI response shape (choices[0].message.content, finish_reason,
usage). Scripted replies are used first, in order; then the responder (a function of the request
body returning a Reply or a string).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    content: str | None = "ok"
    delay_s: float = 0.0
    raw: str | None = None  # a body sent as is instead of a chat completion
    headers: dict[str, str] = field(default_factory=dict)
    finish_reason: str = "stop"


Responder = Callable[[dict[str, Any]], "Reply | str"]


class OpenAIServer:
    def __init__(self, responder: Responder | None = None):
        self.responder = responder or (lambda body: Reply())
        self.queue: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def script(self, *replies: Reply) -> OpenAIServer:
        with self._lock:
            self.queue.extend(replies)
        return self

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> OpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self.queue:
                return self.queue.popleft()
        reply = self.responder(body)
        return Reply(content=reply) if isinstance(reply, str) else reply

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        start = time.perf_counter()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                body = {"_unparsed": raw.decode("utf-8", "replace")}
            record = {"path": h.path, "headers": dict(h.headers), "body": body, "start": start}
            with self._lock:
                self.requests.append(record)
            if h.path != "/v1/chat/completions":
                reply = Reply(status=404, raw=json.dumps({"error": {"message": f"no route {h.path}"}}))
            else:
                reply = self._next_reply(body)
            if reply.delay_s:
                time.sleep(reply.delay_s)
            if reply.raw is not None:
                payload = reply.raw.encode()
                ctype = "application/json"
            elif reply.status != 200:
                payload = json.dumps({"error": {"message": f"scripted error {reply.status}"}}).encode()
                ctype = "application/json"
            else:
                payload = json.dumps(_completion(body, reply)).encode()
                ctype = "application/json"
            try:
                h.send_response(reply.status)
                h.send_header("Content-Type", ctype)
                h.send_header("Content-Length", str(len(payload)))
                for k, v in reply.headers.items():
                    h.send_header(k, v)
                h.end_headers()
                h.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): nothing to answer
            record["end"] = time.perf_counter()
        finally:
            with self._lock:
                self.in_flight -= 1


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    content = reply.content or ""
    prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": reply.finish_reason}],
        "usage": {"prompt_tokens": prompt_words, "completion_tokens": len(content.split()),
                  "total_tokens": prompt_words + len(content.split())},
    }
