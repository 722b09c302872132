"""A real HTTP photo server on a loopback port, as a company's HR system would serve photos:
``GET /photos/<username>.jpg`` answers the photo with an ETag, ``304`` to a matching
If-None-Match, ``404`` for a user it has no photo of, the same to ``HEAD`` without the body (or
``405`` when ``head`` is False); it may demand a Bearer token, and can be told to fail."""
from __future__ import annotations

import hashlib
import http.server
import threading
from collections import Counter
from urllib.parse import unquote


class PhotoServer:
    def __init__(self, token: str | None = None):
        self.photos: dict[str, bytes] = {}
        self.token = token
        self.failing: int | None = None  # answer every request with this status
        self.head = True  # False: HEAD is answered 405 Method Not Allowed
        self.seen: Counter = Counter()  # (username, status, method) -> requests
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real server

            def do_GET(self):
                self.reply(send_body=True)

            def do_HEAD(self):
                self.reply(send_body=False)

            def reply(self, send_body: bool):
                name = unquote(self.path.removeprefix("/photos/").removesuffix(".jpg"))
                if send_body or server.head:
                    status, body, headers = server.answer(name, self.headers)
                else:
                    status, body, headers = 405, b"GET only", {"Allow": "GET"}
                server.seen[(name, status, self.command)] += 1
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/photos/{{username}}.jpg"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def answer(self, name: str, headers) -> tuple[int, bytes, dict]:
        if self.token and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, b"who are you?", {}
        if self.failing:
            return self.failing, b"down for maintenance", {}
        photo = self.photos.get(name)
        if photo is None:
            return 404, b"no photo", {}
        etag = '"' + hashlib.sha256(photo).hexdigest()[:20] + '"'
        if headers.get("If-None-Match") == etag:
            return 304, b"", {"ETag": etag}
        return 200, photo, {"ETag": etag, "Content-Type": "image/jpeg"}

    def count(self, name: str, status: int | None = None, method: str | None = None) -> int:
        return sum(
            n for (user, code, verb), n in self.seen.items()
            if user == name and status in (None, code) and method in (None, verb)
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
