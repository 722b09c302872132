"""A TCP forwarder in front of a loopback server, on a port of the rig's own (below the kernel's
ephemeral range, so a firewall rule on it touches no client socket), and a firewall rule that
drops its packets both ways: a network partition between a client and that server, which
neither end hears about. The forwarder can also freeze: a server that stops answering while its
host's TCP stack still acknowledges everything (a stopped process, a storage stall), which no
TCP timeout or keepalive notices."""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.helpers import unavailable
from tests.rig.ports import free_port


class Forwarder:
    """``listen``: "0.0.0.0" for clients in containers, which reach the host at their bridge's
    gateway address.

    It stands for the server's end of each connection towards its clients, as a database server
    asked for keepalives (app/database.py) would: it probes them, and a client it cannot reach
    (cut off, or gone while it was) ends the connection to the server too, which then lets go of
    that session and its locks. Without that, a session the partition stranded mid-transaction
    would live on through the forwarder, its locks held, though the client is long gone."""

    def __init__(self, host: str, port: int, listen: str = "127.0.0.1"):
        self.target = (host, port)
        self.port = free_port()
        self.listener = socket.create_server((listen, self.port))
        self._sockets: list[socket.socket] = []
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True, name="forwarder").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in ((socket.TCP_KEEPIDLE, 2), (socket.TCP_KEEPINTVL, 1), (socket.TCP_KEEPCNT, 3)):
                client.setsockopt(socket.IPPROTO_TCP, option, value)
            server = socket.create_connection(self.target, timeout=5)
            server.settimeout(None)
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Nothing passes either way until the block ends; what is sent meanwhile is read (the
        sender's kernel has it acknowledged, its keepalives answered) and held."""
        self._flowing.clear()
        try:
            yield
        finally:
            self._flowing.set()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:  # reset, or no answer to the keepalives
            pass
        for end in (source, sink):  # both ways: the other pipe's recv returns, the far ends hear
            _shut(end)

    def close(self) -> None:
        self.listener.close()
        for s in self._sockets:
            _shut(s)  # a close() alone neither wakes a recv() in another thread nor sends a FIN
            s.close()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shut(end: socket.socket) -> None:
    try:
        end.shutdown(socket.SHUT_RDWR)
    except OSError:  # already
        pass


@contextmanager
def partitioned(port: int, peer: int | None = None) -> Iterator[None]:
    """Every packet to or from ``port`` on this host dropped until the block ends (iptables: the
    tests run as root on these machines); with ``peer``, only those between ``port`` and
    ``peer``: one connection, when ``port`` is a client's ephemeral port, which the system also
    gives to other tests' connections to other servers meanwhile."""
    # -w: wait for the xtables lock, which another test's rule may hold a moment
    iptables = [shutil.which("iptables") or unavailable("iptables (apt-get install iptables)"), "-w", "10"]
    to_peer = ["--dport", str(peer)] if peer else []
    from_peer = ["--sport", str(peer)] if peer else []
    rules = [["-p", "tcp", "--dport", str(port), *from_peer, "-j", "DROP"],
             ["-p", "tcp", "--sport", str(port), *to_peer, "-j", "DROP"]]
    added = []
    try:
        for rule in rules:
            result = subprocess.run([*iptables, "-I", "INPUT", *rule], capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                unavailable(f"a firewall rule (iptables: {result.stderr.strip()})")
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run([*iptables, "-D", "INPUT", *rule], check=True, timeout=30)
