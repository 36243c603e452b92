"""The scripted model: what it answers, how it streams, and the in-process client.

`ScriptedModel.handle` turns one HTTP request into one response exactly as the OpenAI
chat-completions endpoint shapes it (a `chat.completion` object with `usage`, or server-sent
`chat.completion.chunk` events ending in `[DONE]`, plus a usage chunk when
`stream_options.include_usage` is set). The HTTP server and the in-process client both
serve it, so they cannot disagree.

`chars_per_chunk` and `chunk_interval` set the token rate: a stream sends that many
characters per chunk at that interval, and a whole answer comes after the time the stream
would take. For tests of order rather than time, `hold_stream_at(n)` stops a stream once it
has sent the first `n` characters of an answer (or the chunk holding them) until
`release_stream()` (or a minute passes); `streamed_chars` counts what streams have sent.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jsonschema

from agentflow.testing.strict import strict_problems

if TYPE_CHECKING:
    import openai


@dataclass
class Reply:
    """One scripted answer. `status` != 200 sends an OpenAI error body with `error`; `body`
    is sent verbatim instead of any generated body (malformed responses); `delay` waits
    before answering; `off_schema` marks a strict answer that breaks its schema on purpose."""

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
    """One request as the model received it."""

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


@dataclass
class Response:
    """What the endpoint sends back: `chunks` are written (and flushed) one by one."""

    status: int
    headers: dict[str, str]
    chunks: Iterator[bytes]
    streaming: bool = False


Responder = Callable[[Request], "Reply | str"]


class ScriptedModel:
    """An OpenAI-compatible chat model that answers from a script.

    `script(...)` queues replies, used in order (a string is a 200 answer with that
    content); when the script is empty, `responder(request)` answers; with neither, the
    request gets a 500 and is listed in `problems`. `requests` records every request.
    `reject_strict=True` imitates a model without strict structured outputs.
    """

    def __init__(self, *replies: Reply | str, responder: Responder | None = None,
                 reject_strict: bool = False, model: str = "scripted-model") -> None:
        self.reject_strict = reject_strict
        self.model = model
        self.requests: list[Request] = []
        self.problems: list[str] = []
        self.responder = responder
        self.chars_per_chunk = 16
        self.chunk_interval = 0.0
        self.streamed_chars = 0
        self._hold_at: int | None = None
        self._released = threading.Event()
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.script(*replies)

    def script(self, *replies: Reply | str) -> None:
        """Queue answers, used in order (a string is a 200 answer with that content)."""
        with self._lock:
            self._script.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def count(self, prompt_contains: str) -> int:
        """How many requests had `prompt_contains` in their last user message."""
        return sum(prompt_contains in r.prompt for r in self.requests)

    def hold_stream_at(self, position: int) -> None:
        """Hold the next stream once it has sent `position` characters, until
        `release_stream`."""
        self._hold_at = position
        self._released.clear()

    def release_stream(self) -> None:
        self._released.set()

    def generation_time(self, content: str) -> float:
        """Seconds the token rate takes to write `content` (a whole answer waits for it)."""
        chunks = max(1, -(-len(content) // max(1, self.chars_per_chunk)))
        return (chunks - 1) * self.chunk_interval

    def client(self, **options: Any) -> openai.OpenAI:
        """A real `openai.OpenAI` client whose requests this model answers in process
        (through an httpx transport: no socket). `options` go to `openai.OpenAI`; client
        retries are off unless `max_retries` says otherwise."""
        import openai

        http = _http_library(openai)

        def send(request: Any) -> Any:
            response = self.handle(request.url.path, dict(request.headers), request.read())
            content = response.chunks if response.streaming else b"".join(response.chunks)
            return http.Response(response.status, headers=response.headers, content=content)

        options = {"api_key": "test", "max_retries": 0, "base_url": "http://scripted.test/v1",
                   **options}
        return openai.OpenAI(http_client=http.Client(transport=http.MockTransport(send)),
                             **options)

    def close(self) -> None:
        """Cut scripted delays and held streams short."""
        self._closing.set()
        self._released.set()

    # -- answering ----------------------------------------------------------------------

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> Response:
        """The response to one HTTP request."""
        if path.rstrip("/") != "/v1/chat/completions":
            return _json(404, {"error": {"message": f"no route {path}"}})
        try:
            body = json.loads(raw)
        except ValueError:
            return _json(400, {"error": {"message": "the body is not JSON"}})
        if not isinstance(body, dict):
            return _json(400, {"error": {"message": "the body is not a JSON object"}})
        request = Request(path, body, {k.lower(): v for k, v in headers.items()})
        refusal = self.refusal(request)
        if refusal is not None:
            with self._lock:
                self.requests.append(request)
            return _error(*refusal)
        reply = self.next_reply(request)
        self._closing.wait(reply.delay)
        if reply.body is not None:
            return Response(reply.status, {"Content-Type": "application/json", **reply.headers},
                            iter([reply.body.encode()]))
        if reply.status != 200:
            return _error(reply.status, reply.error, reply.headers)
        self.check_content(request, reply)
        if request.body.get("stream"):
            return Response(200, {"Content-Type": "text/event-stream",
                                  "Cache-Control": "no-cache", **reply.headers},
                            self._stream(request, reply), streaming=True)
        self._closing.wait(self.generation_time(reply.content))
        return _json(200, _completion(self.model, request, reply), reply.headers)

    def next_reply(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self._script:
                return self._script.popleft()
        if self.responder is not None:
            reply = self.responder(request)
            return reply if isinstance(reply, Reply) else Reply(reply)
        self.problems.append(f"unscripted request: {request.prompt[:200]!r}")
        return Reply(status=500, error="scripted model: no scripted reply left")

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
        """Note a strict-mode answer that breaks its schema (a bug in the script: a real
        strict model cannot produce one)."""
        spec = (request.body.get("response_format") or {}).get("json_schema") or {}
        if reply.off_schema or not spec.get("strict"):
            return
        try:
            jsonschema.validate(json.loads(reply.content), spec["schema"])
        except (ValueError, jsonschema.ValidationError) as error:
            self.problems.append(f"scripted content breaks the strict schema: {error}"[:600])

    def _stream(self, request: Request, reply: Reply) -> Iterator[bytes]:
        base = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.model}
        step = max(1, self.chars_per_chunk)
        pieces = [reply.content[i:i + step] for i in range(0, len(reply.content), step)]
        for index, piece in enumerate(pieces or [""]):
            if index and self.chunk_interval:
                self._closing.wait(self.chunk_interval)
            if self._hold_at is not None and index * step >= self._hold_at:
                self._hold_at = None
                self._released.wait(60)
            delta = {"role": "assistant", "content": piece} if index == 0 else \
                {"content": piece}
            yield _event({**base, "choices": [{"index": 0, "delta": delta,
                                               "finish_reason": None}]})
            self.streamed_chars += len(piece)
        yield _event({**base, "choices": [{"index": 0, "delta": {},
                                           "finish_reason": reply.finish_reason}]})
        if (request.body.get("stream_options") or {}).get("include_usage"):
            yield _event({**base, "choices": [], "usage": _usage(request, reply)})
        yield b"data: [DONE]\n\n"


def _http_library(openai: Any) -> Any:
    """The HTTP library (httpx, or the fork a newer openai ships) the client is built on."""
    return importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__
                                   .partition(".")[0])


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"Content-Type": "application/json", **(headers or {})},
                    iter([json.dumps(payload).encode()]))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    kind = "rate_limit_exceeded" if status == 429 else "invalid_request_error"
    return _json(status, {"error": {"message": message, "type": kind, "param": None,
                                    "code": None}}, headers)


def _usage(request: Request, reply: Reply) -> dict[str, int]:
    if reply.usage is not None:
        return reply.usage
    prompt = len(request.text) // 4 + 1
    completion = len(reply.content) // 4 + 1
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _completion(model: str, request: Request, reply: Reply) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": reply.finish_reason, "logprobs": None,
                     "message": {"role": "assistant", "content": reply.content,
                                 "refusal": None}}],
        "usage": _usage(request, reply),
    }
