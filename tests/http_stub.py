"""A local HTTP server for the tests of what users see when an address answers, but not as expected:
a fake Ray Jobs API (tests/cluster/test_submit.py), or a web server where a Redis shard should be."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Replies(BaseHTTPRequestHandler):
    def _reply(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.received.append((self.command, self.path, body))
        status, text = next((reply for (method, prefix), reply in self.server.replies.items()
                             if method == self.command and self.path.startswith(prefix)), (404, "Not Found"))
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _reply

    def log_message(self, *args) -> None:
        pass


@contextmanager
def fake_server(replies: dict[tuple[str, str], tuple[int, str]]):
    """An HTTP server answering (method, path prefix) with (status, body), 404 to anything else; yields
    its URL and the requests it got, (method, path, body)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replies)
    server.replies, server.received = replies, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", server.received
    finally:
        server.shutdown()
        server.server_close()
