"""A sandbox server (the debtor emulator, the STS) served in a daemon thread of the process that
starts it: ``start()``, ``stop()`` and ``with``. The subclass makes its server (``make_server``)."""

from __future__ import annotations

import socketserver
import threading


class ServedInThread:
    thread_name = "sandbox-server"
    _server: socketserver.BaseServer | None = None
    _thread: threading.Thread | None = None

    def make_server(self) -> socketserver.BaseServer:
        raise NotImplementedError

    def start(self):
        self._server = self.make_server()
        # A short poll: stop() returns within 50 ms instead of serve_forever's default 0.5 s.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
