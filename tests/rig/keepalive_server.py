"""A WSGI server for the Jira emulator: one thread per connection, kept alive as Tomcat keeps
it, each request parsed with a few string operations and each answer sent in one write.

Why not cheroot (a well-kept library): its selector hands every request on a kept-alive
connection to a worker thread and back, which cost the emulator a third more CPU per call. In
the benchmarks the emulator shares two cores with the service it measures, so that CPU slowed
the service's own figures (docs/performance.md, "The cluster's Jira budget, and the emulator's
HTTP server"). What it serves is this project's own clients and tests: HTTP/1.1 and 1.0,
Content-Length or chunked request bodies, `Connection: close`, optionally TLS.
"""

from __future__ import annotations

import io
import socket
import socketserver
import ssl
import sys
import threading
from typing import Any

MAX_LINE = 65536


class _Connection(socketserver.StreamRequestHandler):
    server: KeepAliveServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.opened(self.connection)

    def finish(self) -> None:
        self.server.closed(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def handle(self) -> None:
        try:
            while self._one_request():
                pass
        except (OSError, ValueError, ssl.SSLError):
            pass  # the client went away or sent nonsense: the connection ends, quietly

    def _one_request(self) -> bool:
        """Serve one request; whether the connection stays open for the next."""
        line = self.rfile.readline(MAX_LINE + 1)
        if not line.strip():
            return False
        method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        path, _, query = target.partition("?")
        port = self.server.server_address[1]
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SCRIPT_NAME": "",
            "SERVER_NAME": "localhost", "SERVER_PORT": str(port), "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": self.client_address[0] if self.client_address else "127.0.0.1",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "https" if self.server.tls else "http",
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False}
        while True:
            header = self.rfile.readline(MAX_LINE + 1)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            key = name.strip().upper().replace("-", "_")
            key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"
            environ[key] = f"{environ[key]}, {value.strip()}" if key in environ else value.strip()
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            environ["wsgi.input"] = io.BytesIO(self._chunked_body())
            environ["wsgi.input_terminated"] = True
        else:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            environ["wsgi.input"] = io.BytesIO(self.rfile.read(length) if length else b"")
        connection = environ.get("HTTP_CONNECTION", "").lower()
        keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"

        answer: dict = {}

        def start_response(status, headers, exc_info=None):
            answer["status"], answer["headers"] = status, headers

        result = self.server.app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        headers = list(answer["headers"])
        if not any(k.lower() == "content-length" for k, _ in headers):
            headers.append(("Content-Length", str(len(body))))
        if not keep:
            headers.append(("Connection", "close"))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers)
        self.connection.sendall(f"HTTP/1.1 {answer['status']}\r\n{head}\r\n".encode("latin-1")
                                + (b"" if method == "HEAD" else body))
        return keep

    def _chunked_body(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline(MAX_LINE + 1).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(MAX_LINE + 1)


class KeepAliveServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app, tls: tuple[str, str] | None = None):
        """``tls``: (certificate file, key file) to serve HTTPS."""
        self.app = app
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) if tls else None
        if self.tls and tls:
            self.tls.load_cert_chain(*tls)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Connection)

    def get_request(self):
        conn, address = super().get_request()
        if self.tls:
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.add(conn)

    def closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.discard(conn)

    def handle_error(self, request, client_address) -> None:
        pass  # a connection's end is the client's business (handle() already ends it quietly)

    def stop(self) -> None:
        """Refuse new connections and cut the open ones, as a Jira node that goes down does."""
        self.shutdown()
        self.server_close()
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
