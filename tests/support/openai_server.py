"""A scripted OpenAI-compatible chat-completions server for tests: no network, real client.

`OpenAIServer` listens on 127.0.0.1 (a free port) and answers `POST /v1/chat/completions`
the way the OpenAI API does: a `chat.completion` object with `usage`, or with
`"stream": true` server-sent `chat.completion.chunk` events ending in `[DONE]` (plus a usage
chunk when `stream_options.include_usage` is set). Each test scripts the model:

    server.script("first answer", Reply(status=429, headers={"Retry-After": "0"}), ...)
    server.responder = lambda request: f"echo {request.prompt}"   # when the script is empty

`chars_per_chunk` and `chunk_interval` set the token rate: a stream sends that many
characters per chunk at that interval, and a whole answer comes after the time the stream
would take. For tests of order rather than time, `hold_stream_at(n)` stops a stream once
it has sent the first `n` characters of an answer (or the chunk holding them) until
`release_stream()` (or a minute passes); `streamed_chars` counts what streams have sent.
Every request is recorded (`server.requests`: path, JSON body, headers) for assertions.
Like the real API, it refuses a missing bearer token (401), `json_object` mode without the
word "json" in the messages (400), and a `json_schema` with `strict: true` that breaks the
strict-mode rules (400); `reject_strict=True` imitates a model without strict structured
outputs. A strict answer that does not match its schema is a bug of the test's script
(a real strict model cannot produce one): it is answered anyway and listed in `problems`,
which the pytest fixture asserts empty (unless the reply says `off_schema=True`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonschema

# Keywords OpenAI's strict mode has refused (its most conservative published profile).
_UNSUPPORTED = frozenset({
    "minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "patternProperties", "unevaluatedProperties",
    "propertyNames", "minProperties", "maxProperties", "unevaluatedItems", "contains",
    "minContains", "maxContains", "minItems", "maxItems", "uniqueItems", "allOf", "not",
    "if", "then", "else", "dependentRequired", "dependentSchemas", "oneOf", "default",
})


@dataclass
class Reply:
    """One scripted answer. `status` != 200 sends an OpenAI error body with `error`; `body`
    is sent verbatim instead of any generated body (malformed responses)."""

    content: str = ""
    status: int = 200
    error: str = "scripted error"
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    usage: dict[str, int] | None = None
    delay: float = 0.0
    off_schema: bool = False
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Request:
    """One request as the server received it."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.body.get("messages", [])
        return messages

    @property
    def prompt(self) -> str:
        """The content of the last user message."""
        users = [m for m in self.messages if m.get("role") == "user"]
        return str(users[-1].get("content", "")) if users else ""

    @property
    def text(self) -> str:
        """Every message's content, one per line."""
        return "\n".join(str(m.get("content", "")) for m in self.messages)


class OpenAIServer:
    """The scripted server; use as a context manager or `start()`/`close()`."""

    def __init__(self, *, reject_strict: bool = False, model: str = "scripted-model") -> None:
        self.reject_strict = reject_strict
        self.model = model
        self.requests: list[Request] = []
        self.problems: list[str] = []
        self.responder: Callable[[Request], Reply | str] | None = None
        self.chars_per_chunk = 16
        self.chunk_interval = 0.0
        self.streamed_chars = 0
        self._hold_at: int | None = None
        self._released = threading.Event()
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
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

    def hold_stream_at(self, position: int) -> None:
        """Hold the next stream once it has sent `position` characters, until `release_stream`."""
        self._hold_at = position
        self._released.clear()

    def release_stream(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._closing.set()  # cuts scripted delays short
        self._released.set()
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def script(self, *replies: Reply | str) -> None:
        """Queue answers, used in order (a string is a 200 answer with that content)."""
        with self._lock:
            self._script.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def count(self, prompt_contains: str) -> int:
        """How many requests had `prompt_contains` in their last user message."""
        return sum(prompt_contains in r.prompt for r in self.requests)

    def generation_time(self, content: str) -> float:
        """Seconds the token rate takes to write `content` (a whole answer waits for it)."""
        chunks = max(1, -(-len(content) // max(1, self.chars_per_chunk)))
        return (chunks - 1) * self.chunk_interval

    def next_reply(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self._script:
                return self._script.popleft()
        if self.responder is not None:
            reply = self.responder(request)
            return reply if isinstance(reply, Reply) else Reply(reply)
        self.problems.append(f"unscripted request: {request.prompt[:200]!r}")
        return Reply(status=500, error="fixture: no scripted reply left")

    def refusal(self, request: Request) -> tuple[int, str] | None:
        """The error the real API would give this request, if any."""
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return 401, "missing bearer token"
        body = request.body
        if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
            return 400, "'model' and 'messages' are required"
        response_format = body.get("response_format") or {"type": "text"}
        kind = response_format.get("type")
        if kind == "json_object" and "json" not in request.text.lower():
            return 400, ("'messages' must contain the word 'json' in some form, to use "
                         "'response_format' of type 'json_object'.")
        if kind == "json_schema":
            spec = response_format.get("json_schema") or {}
            if not isinstance(spec.get("schema"), dict) or not spec.get("name"):
                return 400, "response_format.json_schema needs a name and a schema"
            if spec.get("strict"):
                if self.reject_strict:
                    return 400, ("Invalid parameter: 'response_format' of type 'json_schema' "
                                 "is not supported with this model.")
                problems = list(strict_problems(spec["schema"]))
                if problems:
                    return 400, (f"Invalid schema for response_format '{spec['name']}': "
                                 + "; ".join(problems[:5]))
        elif kind not in ("text", "json_object"):
            return 400, f"unknown response_format type {kind!r}"
        return None

    def check_content(self, request: Request, reply: Reply) -> None:
        """Note a strict-mode answer that breaks its schema (a bug in the test's script)."""
        spec = (request.body.get("response_format") or {}).get("json_schema") or {}
        if reply.off_schema or reply.status != 200 or reply.body is not None:
            return
        if not spec.get("strict"):
            return
        try:
            jsonschema.validate(json.loads(reply.content), spec["schema"])
        except (ValueError, jsonschema.ValidationError) as error:
            self.problems.append(f"scripted content breaks the strict schema: {error}"[:600])


def strict_problems(schema: dict[str, Any]) -> Iterator[str]:
    """Where `schema` breaks OpenAI's strict structured-output rules."""
    if schema.get("type") != "object":
        yield "the root schema must be an object (not anyOf)"

    def walk(node: Any, where: str) -> Iterator[str]:
        if not isinstance(node, dict):
            return
        for keyword in sorted(_UNSUPPORTED & node.keys()):
            yield f"{where}: '{keyword}' is not permitted"
        types = node.get("type")
        types = types if isinstance(types, list) else [types]
        if "object" in types:
            properties = node.get("properties")
            if not isinstance(properties, dict):
                yield f"{where}: an object needs 'properties' (free-form objects are refused)"
                properties = {}
            if node.get("additionalProperties") is not False:
                yield f"{where}: 'additionalProperties' is required to be supplied and false"
            if sorted(node.get("required", [])) != sorted(properties):
                yield f"{where}: 'required' must list every property"
            for name, child in properties.items():
                yield from walk(child, f"{where}.properties.{name}")
        if "array" in types:
            if not isinstance(node.get("items"), dict) or not node["items"]:
                yield f"{where}: an array needs a typed 'items' schema"
            yield from walk(node.get("items"), f"{where}.items")
        if node == {}:
            yield f"{where}: an empty schema (any value) is refused"
        for index, branch in enumerate(node.get("anyOf", [])):
            yield from walk(branch, f"{where}.anyOf[{index}]")
        for name, child in node.get("$defs", {}).items():
            yield from walk(child, f"$defs.{name}")

    yield from walk(schema, "$")


def _usage(request: Request, reply: Reply) -> dict[str, int]:
    if reply.usage is not None:
        return reply.usage
    prompt = len(request.text) // 4 + 1
    completion = len(reply.content) // 4 + 1
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _handler_for(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read `server.requests` instead."""

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, {"error": {"message": "the body is not JSON"}})
                return
            request = Request(self.path, body, {k.lower(): v for k, v in self.headers.items()})
            refusal = server.refusal(request)
            if refusal is not None:
                with server._lock:
                    server.requests.append(request)
                self._error(*refusal)
                return
            reply = server.next_reply(request)
            server._closing.wait(reply.delay)
            try:
                self._answer(request, reply)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client went away (killed worker): nothing to answer

        def _answer(self, request: Request, reply: Reply) -> None:
            if reply.body is not None:
                self._send_text(reply.status, reply.body, reply.headers)
            elif reply.status != 200:
                self._error(reply.status, reply.error, reply.headers)
            else:
                server.check_content(request, reply)
                if request.body.get("stream"):
                    self._stream(request, reply)
                else:
                    server._closing.wait(server.generation_time(reply.content))
                    self._send(200, _completion(server.model, request, reply), reply.headers)

        def _error(self, status: int, message: str,
                   headers: dict[str, str] | None = None) -> None:
            kind = "rate_limit_exceeded" if status == 429 else "invalid_request_error"
            self._send(status, {"error": {"message": message, "type": kind, "param": None,
                                          "code": None}}, headers)

        def _send(self, status: int, payload: Any,
                  headers: dict[str, str] | None = None) -> None:
            self._send_text(status, json.dumps(payload), headers)

        def _send_text(self, status: int, text: str,
                       headers: dict[str, str] | None = None) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, request: Request, reply: Reply) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            base = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": server.model}
            step = max(1, server.chars_per_chunk)
            pieces = [reply.content[i:i + step] for i in range(0, len(reply.content), step)]
            for index, piece in enumerate(pieces or [""]):
                if index and server.chunk_interval:
                    time.sleep(server.chunk_interval)
                if server._hold_at is not None and index * step >= server._hold_at:
                    server._hold_at = None
                    server._released.wait(60)
                delta = {"role": "assistant", "content": piece} if index == 0 else \
                    {"content": piece}
                self._event({**base, "choices": [{"index": 0, "delta": delta,
                                                  "finish_reason": None}]})
                server.streamed_chars += len(piece)
            self._event({**base, "choices": [{"index": 0, "delta": {},
                                              "finish_reason": reply.finish_reason}]})
            if (request.body.get("stream_options") or {}).get("include_usage"):
                self._event({**base, "choices": [], "usage": _usage(request, reply)})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _event(self, payload: dict[str, Any]) -> None:
            self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
            self.wfile.flush()

    return Handler


def _completion(model: str, request: Request, reply: Reply) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": reply.finish_reason, "logprobs": None,
                     "message": {"role": "assistant", "content": reply.content,
                                 "refusal": None}}],
        "usage": _usage(request, reply),
    }
