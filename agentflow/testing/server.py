"""The scripted model over HTTP: `OpenAIServer` listens on 127.0.0.1 (a free port), so any
OpenAI-compatible client, in this process or another, can use it by its `base_url`."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agentflow.testing.model import Reply, ScriptedModel


class OpenAIServer(ScriptedModel):
    """A `ScriptedModel` answering `POST /v1/chat/completions` on a local port; use as a
    context manager or `start()` / `close()`."""

    def __init__(self, *replies: Reply | str, **options: Any) -> None:
        super().__init__(*replies, **options)
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.02,),
                                        daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    def start(self) -> OpenAIServer:
        self._thread.start()
        return self

    def close(self) -> None:
        super().close()
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler_for(model: ScriptedModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read `requests` instead."""

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            response = model.handle(self.path, dict(self.headers.items()), raw)
            try:
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                if response.streaming:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                    self.end_headers()
                    for chunk in response.chunks:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    return
                data = b"".join(response.chunks)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client went away (a killed worker): nothing to answer

    return Handler
