"""Test helpers around real HTTP: an ASGI app served by uvicorn on 127.0.0.1:<free port> in a daemon
thread, and client threads that keep requests going while a test does something to the server."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def serve_in_thread(app, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Yields the base URL while the server runs; stops it afterwards."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    try:
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class ClientThreads:
    """`clients` daemon threads, each running `self._run(index)` until `self.stop` is set; as a
    context manager they start on entry and are stopped and joined on exit. `alive()` after exit
    names the threads that did not finish within `join_timeout_s` (a hung request)."""

    join_timeout_s: float = 180.0

    def __init__(self, clients: int):
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        raise NotImplementedError

    def alive(self) -> list[threading.Thread]:
        return [t for t in self.threads if t.is_alive()]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.join_timeout_s)
