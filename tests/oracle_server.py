"""A fake OpenAI API on 127.0.0.1 for tests: chat completions, files and batches.

Drive the real `openai` client and the real CLI against it. Reuse it from any test module:

    from oracle_server import Reply, oracle_server_fixture  # noqa: F401  (provides the `oracle_server` fixture)

    def test_x(oracle_server):
        oracle_server.queue(Reply(status=429, headers={"Retry-After": "0"}))  # next request: a 429
        ... OracleConfig(base_url=oracle_server.url, api_key="k") ...
        assert oracle_server.count() == 2

Chat requests take the queued `Reply`s first, in order, then the `answerer` (default: the first
`cap` steps, read from the prompt), which also answers Batch API requests. Streamed requests
(`stream: true`, what critstep sends to every server but OpenAI's) get server-sent events.

The real servers' quirks are switches, and `FakeOpenAI.like(name)` sets those of one server:

- llama-cpp-python: json_schema refused with HTTP 500 naming `response_format` (a pydantic error);
  `json_object` with a `schema` accepted; any model name served; one streamed answer at a time, the
  current one ended (`[DONE]` after its first chunk, no finish_reason) when another request waits.
- transformers serve: `response_format` ignored with a 200 (the model writes prose around its
  JSON); pinned to one model (400 `detail` naming it for any other); `stream_options` ignored.
- llama-server: everything accepted.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

CHAT = "/v1/chat/completions"


@dataclass
class Reply:
    """One scripted reply to a chat request: an answer object, raw content, a refusal or an error."""

    status: int = 200
    answer: dict[str, Any] | None = None
    content: str | None = None
    refusal: str | None = None
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    usage: Any = "normal"  # or None (no usage field), or a dict sent as is (e.g. negative counts)
    raw: bytes | None = None  # a body sent as is, with `content_type`
    content_type: str = "text/html"
    unfinished: bool = False  # streamed: the first chunk, then [DONE] (no content, no finish_reason)


def prompt_shape(body: dict[str, Any]) -> tuple[int, int]:
    """(steps, cap) as the oracle prompt states them: counts `<step index=` tags, reads 'at most N'."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    n = len(re.findall(r'<step index="\d+">', user))
    cap = int(re.findall(r"at most (\d+)", body["messages"][-1]["content"])[0])
    return n, cap


def default_answer(body: dict[str, Any]) -> dict[str, Any]:
    """A valid answer: the first `cap` steps, the first one as plan_creation."""
    n, cap = prompt_shape(body)
    critical = [{"step": i, "category": "plan_creation" if i == 0 else "critical_action", "reason": f"step {i} matters"} for i in range(min(cap, n))]
    return {"plan": "Do the task.", "critical": critical}


def sample_trajectories(n: int, steps: int = 10, env: str = "alfworld") -> list[dict[str, Any]]:
    """`n` distinct OpenAI-format trajectory records of `steps` steps each (JSONL-ready)."""
    records = []
    for i in range(n):
        messages = [{"role": "system", "content": "Solve the household task."}, {"role": "user", "content": f"Your task is to: put object {i} in place."}]
        for k in range(steps):
            messages.append({"role": "assistant", "content": f"go to place {k} looking for object {i}"})
            messages.append({"role": "user", "content": f"You arrive at place {k}. Nothing happens."})
        records.append({"id": f"traj-{i}", "env": env, "messages": messages})
    return records


PROFILES: dict[str, dict[str, Any]] = {
    "llama-cpp-python": {"json_schema": False, "format_error_status": 500, "interrupt_requests": True},
    "transformers-serve": {"ignore_format": True, "pinned": "/models/smollm2", "models": ["/models/smollm2"]},
    "llama-server": {"models": ["SmolLM2-135M-Instruct.Q4_1.gguf"]},
}


class FakeOpenAI:
    """The server. `requests` logs (method, path, body, lower-cased headers) of every request, in order.

    `json_schema`/`json_object`: formats accepted (a refused one gets `format_error_status` naming
    response_format); `ignore_format`: formats accepted but ignored (prose around the JSON);
    `pinned`: the only model answered; `models`: what GET /v1/models lists (None: 404);
    `files`: whether the Files/Batch API exists; `chunk_delay`: seconds between streamed pieces;
    `interrupt_requests`: streamed answers one at a time, the current one ended unfinished as soon as
    another request waits (llama-cpp-python's default).
    """

    def __init__(
        self,
        json_schema: bool = True,
        json_object: bool = True,
        batch_polls: int = 1,
        format_error_status: int = 400,
        ignore_format: bool = False,
        pinned: str | None = None,
        models: list[str] | None = ("gpt-4o",),  # type: ignore[assignment]
        files: bool = True,
        interrupt_requests: bool = False,
    ):
        self.json_schema = json_schema
        self.json_object = json_object
        self.batch_polls = batch_polls
        self.format_error_status = format_error_status
        self.ignore_format = ignore_format
        self.pinned = pinned
        self.models = list(models) if models is not None else None
        self.files_api = files
        self.interrupt_requests = interrupt_requests
        self.interrupted = 0  # streamed answers ended unfinished for a waiting request
        self._generating = threading.Lock()
        self._waiting = 0
        self.chunk_delay = 0.0
        self.streams_closed_early = 0  # streamed answers the client hung up on
        self.delay = 0.0  # seconds before every chat answer that has no delay of its own
        self.answerer: Callable[[dict[str, Any]], dict[str, Any]] = default_answer
        self.replies: deque[Reply] = deque()
        self.requests: list[tuple[str, str, Any, dict[str, str]]] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @classmethod
    def like(cls, name: str, **overrides: Any) -> FakeOpenAI:
        """A server with the quirks of a real one (see PROFILES), not yet started."""
        return cls(**{**PROFILES[name], **overrides})

    @contextlib.contextmanager
    def one_at_a_time(self) -> Iterator[None]:
        """Hold the one generation slot; while waiting for it, count as a waiting request."""
        with self.lock:
            self._waiting += 1
        with self._generating:
            with self.lock:
                self._waiting -= 1
            yield

    def others_waiting(self) -> bool:
        with self.lock:
            return self._waiting > 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def queue(self, *replies: Reply) -> None:
        with self.lock:
            self.replies.extend(replies)

    def count(self, path: str = CHAT, method: str = "POST") -> int:
        with self.lock:
            return sum(1 for m, p, _, _ in self.requests if p == path and m == method)

    def bodies(self, path: str = CHAT) -> list[Any]:
        with self.lock:
            return [b for _, p, b, _ in self.requests if p == path]

    # --- endpoints -------------------------------------------------------------------------
    def chat(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str], float, Reply]:
        fmt = (body.get("response_format") or {}).get("type")
        if self.pinned is not None and body.get("model") != self.pinned:
            return 400, {"detail": f"Server is pinned to '{self.pinned}'; requested '{body.get('model')}'."}, {}, 0.0, Reply()
        if (fmt == "json_schema" and not self.json_schema) or (fmt == "json_object" and not self.json_object):
            if self.format_error_status == 500:  # llama-cpp-python: a pydantic validation error, as a 500
                error = _error(f"1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input should be 'text' or 'json_object' [input_value='{fmt}']", "internal_server_error")
            else:
                error = _error(f"response_format type {fmt} is not supported by this server", "invalid_request_error")
            return self.format_error_status, error, {}, 0.0, Reply()
        with self.lock:
            reply = self.replies.popleft() if self.replies else Reply(delay=self.delay)
        if reply.status != 200:
            return reply.status, reply.error or _error(f"scripted HTTP {reply.status}", "server_error"), reply.headers, reply.delay, reply
        content = reply.content
        if content is None and reply.refusal is None:
            content = json.dumps(reply.answer if reply.answer is not None else self.answerer(body))
            if self.ignore_format:  # an unconstrained small model: prose around its JSON
                content = f"Sure! Here are the critical steps:\n```json\n{content}\n```\nI hope this helps."
        return 200, completion(body, content, reply.refusal, reply.usage), reply.headers, reply.delay, reply

    def upload(self, content_type: str, raw: bytes) -> dict[str, Any]:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        data = parts["file"].get_payload(decode=True)
        with self.lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = data
        return _file(file_id, len(data), parts["purpose"].get_content().strip())

    def create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            batch_id = f"batch_{len(self.batches) + 1}"
            self.batches[batch_id] = {"input_file_id": body["input_file_id"], "endpoint": body["endpoint"], "polls": 0, "output_file_id": None}
        return self.batch_object(batch_id)

    def poll_batch(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            batch = self.batches[batch_id]
            batch["polls"] += 1
            ready = batch["polls"] >= self.batch_polls and batch["output_file_id"] is None
            lines = self.files[batch["input_file_id"]].decode().splitlines()
        if ready:
            out = []
            for line in lines:
                req = json.loads(line)
                body = completion(req["body"], json.dumps(self.answerer(req["body"])), None)
                out.append(json.dumps({"id": f"req-{req['custom_id'][:8]}", "custom_id": req["custom_id"], "response": {"status_code": 200, "body": body}, "error": None}))
            with self.lock:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = ("\n".join(out) + "\n").encode()
                batch["output_file_id"] = file_id
        return self.batch_object(batch_id)

    def batch_object(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            b = self.batches[batch_id]
            n = len(self.files[b["input_file_id"]].decode().splitlines())
            done = b["output_file_id"] is not None
            return {
                "id": batch_id, "object": "batch", "endpoint": b["endpoint"], "input_file_id": b["input_file_id"],
                "completion_window": "24h", "created_at": int(time.time()), "status": "completed" if done else "in_progress",
                "output_file_id": b["output_file_id"], "error_file_id": None,
                "request_counts": {"total": n, "completed": n if done else 0, "failed": 0},
            }  # fmt: skip


def completion(body: dict[str, Any], content: str | None, refusal: str | None, usage: Any = "normal") -> dict[str, Any]:
    prompt_chars = sum(len(str(m.get("content") or "")) for m in body["messages"])
    completion_tokens = len(content or refusal or "") // 4 + 1
    out = {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content, "refusal": refusal}}],
        "usage": {"prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": completion_tokens, "total_tokens": prompt_chars // 4 + 1 + completion_tokens},
    }  # fmt: skip
    if usage is None:
        del out["usage"]
    elif usage != "normal":
        out["usage"] = usage
    return out


def sse_events(answer: dict[str, Any]) -> list[str]:
    """A chat completion as the chunks of a stream: role, content in pieces, finish, usage, [DONE]."""
    choice = answer["choices"][0]
    message = choice["message"]
    head = {k: answer[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    chunks = [head | {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    text = message.get("content") or ""
    for i in range(0, len(text), max(1, len(text) // 4 + 1)):
        chunks.append(head | {"choices": [{"index": 0, "delta": {"content": text[i : i + len(text) // 4 + 1]}}]})
    if message.get("refusal"):
        chunks.append(head | {"choices": [{"index": 0, "delta": {"refusal": message["refusal"]}}]})
    chunks.append(head | {"choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
    if "usage" in answer:
        chunks.append(head | {"choices": [], "usage": answer["usage"]})
    return [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


def _file(file_id: str, size: int, purpose: str) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()), "filename": "requests.jsonl", "purpose": purpose, "status": "processed"}


def _handler(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None, content_type: str | None = None) -> None:
            data = raw if raw is not None else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type or ("application/octet-stream" if raw is not None else "application/json"))
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a time-out test)

        def _stream(self, events: list[str], headers: dict[str, str], interrupt: Callable[[], bool] | None = None) -> None:
            """Server-sent events, chunked, `server.chunk_delay` apart; counts hang-ups. After each
            event, `interrupt()` true ends the stream with `[DONE]` (llama-cpp-python's check)."""
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                finish = next((i for i, e in enumerate(events) if '"finish_reason": "' in e), len(events) - 1)
                for i, event in enumerate(events):
                    data = event.encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    if server.chunk_delay:
                        time.sleep(server.chunk_delay)
                    if interrupt is not None and i < finish and interrupt():
                        done = b"data: [DONE]\n\n"
                        self.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n")
                        with server.lock:
                            server.interrupted += 1
                        break
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                with server.lock:
                    server.streams_closed_early += 1

        def _log(self, body: Any) -> None:
            with server.lock:
                server.requests.append((self.command, self.path, body, {k.lower(): v for k, v in self.headers.items()}))

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path in ("/v1/files", "/v1/batches") and not server.files_api:
                self._log(None)
                self._send(404, {"detail": "Not Found"})
                return
            if self.path == "/v1/files":
                self._log(None)
                self._send(200, server.upload(self.headers["Content-Type"], raw))
                return
            body = json.loads(raw)
            self._log(body)
            if self.path == CHAT:
                status, payload, headers, delay, reply = server.chat(body)
                if delay:
                    time.sleep(delay)
                if reply.raw is not None:
                    self._send(status, None, headers, raw=reply.raw, content_type=reply.content_type)
                elif status == 200 and body.get("stream") and reply.unfinished:
                    self._stream(sse_events(payload)[:1] + ["data: [DONE]\n\n"], headers)
                elif status == 200 and body.get("stream") and server.interrupt_requests:
                    with server.one_at_a_time():
                        self._stream(sse_events(payload), headers, interrupt=server.others_waiting)
                elif status == 200 and body.get("stream"):
                    self._stream(sse_events(payload), headers)
                else:
                    self._send(status, payload, headers)
            elif self.path == "/v1/batches":
                self._send(200, server.create_batch(body))
            else:
                self._send(404, _error(f"no route {self.path}", "invalid_request_error"))

        def do_GET(self) -> None:
            self._log(None)
            if self.path == "/v1/models" and server.models is not None:
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in server.models]})
            elif m := re.fullmatch(r"/v1/batches/([\w-]+)", self.path):
                self._send(200, server.poll_batch(m.group(1)))
            elif m := re.fullmatch(r"/v1/files/([\w-]+)/content", self.path):
                self._send(200, None, raw=server.files[m.group(1)])
            else:
                self._send(404, _error(f"no route {self.path}", "invalid_request_error"))

    return Handler


@pytest.fixture(name="oracle_server")
def oracle_server_fixture() -> Iterator[FakeOpenAI]:
    """A started `FakeOpenAI`, stopped after the test."""
    server = FakeOpenAI().start()
    yield server
    server.stop()
