"""Chat completions through the official `openai` client, with our own retry and format policy.

The client's built-in retries are off so that the policy is explicit and testable:

- 429, 408/409, 5xx and dropped connections are retried with exponential backoff honouring
  `Retry-After`; a `Retry-After` beyond `MAX_RETRY_AFTER` stops the run and says so rather than
  sleeping it. A chat request that times out, or whose streamed answer the server ends unfinished
  (llama-cpp-python drops the current answer when another request waits), is handed back to the
  labeler, which halves its concurrency and sends it once more when a slot is free (a server that
  queues requests stops timing out), rather than retrying it at once into the same queue.
- 401, 403, `insufficient_quota`, an unknown or pinned model, and an answer that is not an OpenAI
  API response at all (an HTML page: a wrong `--base-url`) stop the whole run: every further
  request would fail the same way.
- A circuit breaker stops the run after `max_consecutive_failures` failed attempts in a row.
- A 400/422/500 whose body names `response_format` means "format unsupported", not "retry".

`--response-format auto` starts with strict JSON schemas and falls back to JSON mode, then plain
text, when the server rejects a format or answers 200 but ignores it (the answer is not JSON). The
first answers probe one at a time; what works is remembered per endpoint for the process.

Local servers are streamed: a request given up (time-out, Ctrl-C) closes its connection, which
stops the server generating for nobody. Every message carries the server's own explanation
(`error.message` or FastAPI's `detail`), with the API key and any 8+ character piece of it removed.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from critstep.errors import CritstepError
from critstep.selector.oracle.endpoint import endpoint_id, is_openai
from critstep.selector.oracle.pricing import estimate_tokens
from critstep.selector.oracle.schema import MODES, answer_schema, is_strict_json, parse_answer, response_format

log = logging.getLogger("critstep.oracle")

RETRY_STATUS = {408, 409, 429}
# A Retry-After beyond this is not slept: the run stops and says when to come back.
MAX_RETRY_AFTER = 300.0
# Waits at least this long are announced as warnings, not only in the progress line.
LOUD_WAIT = 30.0
# Time-outs retried per request outside chat (the Batch API's calls); chat requests go back to the labeler.
TIMEOUT_RETRIES = 1
FORMAT_HINTS = ("response_format", "json_schema", "json_object", "structured output", "guided")
T = TypeVar("T")

# What `auto` learned per (endpoint, model) in this process, so that every later client (the
# cascades of `compare`, a second `label` call) starts with the format that works.
_LEARNED: dict[tuple[str, str], str] = {}
_LEARNED_LOCK = threading.Lock()


class APIStopError(CritstepError):
    """The server refuses this run (bad key, no quota, unknown model, not an API): stop, keep what is paid for."""


class RequestError(Exception):
    """One request failed for good (retries spent, or a non-retryable error): its trajectory fails."""


class TimedOut(RequestError):
    """A chat request got no answer within the timeout; the labeler may send it once more, later."""

    hint = "the server is too slow for this timeout (raise --timeout, or lower --concurrency)"


class CutShort(TimedOut):
    """A streamed answer ended without a finish_reason: the server dropped it to serve another request.

    llama-cpp-python's server does this by default (`interrupt_requests`): it generates one answer
    at a time and ends the current stream as soon as another request waits. Like a time-out, it
    halves the concurrency and the request goes once more, later.
    """

    hint = ("the server ends an answer when another request waits (llama-cpp-python: start it with "
            "--interrupt_requests False, or use --concurrency 1)")


class Cancelled(Exception):
    """The run was interrupted (Ctrl-C): the request was abandoned and its connection closed."""


class _FormatUnsupported(Exception):
    """The server rejected the request's response_format (internal: triggers the fallback)."""


@dataclass(frozen=True)
class Completion:
    """One answer; tokens are summed over the requests it took (a probe the server ignored counts)."""

    text: str | None
    refusal: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    calls: int = 1
    usage_estimated: bool = False


def redact(text: str, secret: str | None) -> str:
    """`text` without `secret`, and without any piece of it 8 characters or longer (a server may echo a prefix)."""
    if not secret or len(secret) < 4:
        return text
    text = text.replace(secret, "***")
    if len(secret) <= 8:
        return text
    out, i = [], 0
    while i < len(text):
        length = _secret_run(text, i, secret)
        if length >= 8:
            out.append("***")
            i += length
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _secret_run(text: str, i: int, secret: str) -> int:
    """Length of the longest piece of `secret` that starts at text[i] (0 when text[i] is not in it)."""
    best = 0
    start = secret.find(text[i])
    while start != -1:
        n = 0
        while i + n < len(text) and start + n < len(secret) and text[i + n] == secret[start + n]:
            n += 1
        best = max(best, n)
        start = secret.find(text[i], start + 1)
    return best


def retry_after(headers: Any) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, or `Retry-After` as seconds or a date."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time())


def server_detail(e: Any, limit: int = 300) -> str:
    """The server's own explanation of an error: `error.message`, FastAPI's `detail`, or the raw body."""
    body = getattr(e, "body", None)
    detail: Any = None
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail") or body.get("error")
        if isinstance(detail, dict):
            detail = detail.get("message") or detail
        if isinstance(detail, list):  # pydantic validation errors
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict) else str(d) for d in detail)
    elif isinstance(body, str) and body.strip():
        detail = body
    text = str(detail if detail not in (None, "") else getattr(e, "message", "") or "no explanation").strip()
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mentions(e: Any, words: tuple[str, ...]) -> bool:
    text = f"{getattr(e, 'message', '')} {json.dumps(getattr(e, 'body', None), default=str)}".lower()
    return any(w in text for w in words)


def _model_problem(e: Any) -> bool:
    """An unknown model (OpenAI, vLLM, Ollama: 404 model_not_found) or one the server is pinned against."""
    code = getattr(e, "code", None)
    if code == "model_not_found":
        return True
    text = f"{getattr(e, 'message', '')} {json.dumps(getattr(e, 'body', None), default=str)}".lower()
    if "pinned to" in text:
        return True
    return e.status_code in (400, 404) and "model" in text and any(w in text for w in ("not found", "does not exist", "not exist", "unknown model", "no such model"))


class ChatClient:
    """One model behind one endpoint. Thread-safe: the format, failure count and cancel flag are shared."""

    def __init__(
        self,
        model: str,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        sleep: Callable[[float], Any] | None = None,
        response_format: str = "auto",
        stream: bool | None = None,
        max_consecutive_failures: int = 8,
    ):
        import openai

        if response_format != "auto" and response_format not in MODES:
            raise ValueError(f"unknown response format {response_format!r}")
        self._openai = openai
        self.model = model
        self.base_url = base_url
        self.endpoint = endpoint_id(base_url)
        self._key = api_key
        self.timeout = timeout
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.cancel = threading.Event()
        self.sleep: Callable[[float], Any] = sleep or self.cancel.wait  # a Ctrl-C cuts a wait short
        openai_api = is_openai(base_url)
        self.dialect = ("openai-ft" if model.startswith("ft:") else "openai") if openai_api else "full"
        self.stream = (not openai_api) if stream is None else stream
        self._stream_options = True
        self.fixed = response_format != "auto"
        learned = None if self.fixed else _LEARNED.get((self.endpoint, model))
        self.mode = response_format if self.fixed else (learned or MODES[0])
        self.confirmed = learned is not None  # a fixed format is probed too: one request first
        self._probe = threading.Lock()
        self._lock = threading.RLock()
        self.max_consecutive_failures = max_consecutive_failures
        self.stopped: str | None = None
        self._failures = 0
        self.retries = 0
        # Hooks the labeler sets: a progress message, and "a request timed out".
        self.on_event: Callable[[str], None] = lambda message: log.info("%s", message)
        self.on_timeout: Callable[[str], None] = lambda why: None

    def redact(self, text: str) -> str:
        return redact(text, self._key)

    def body(self, n_steps: int, cap: int, messages: list[dict[str, Any]], max_tokens: int, mode: str | None = None) -> dict[str, Any]:
        """The request body (also what a Batch API line carries), with the schema of this trajectory."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        fmt = response_format(mode or self.mode, answer_schema(n_steps, cap, self.dialect), self.dialect)
        if fmt is not None:
            body["response_format"] = fmt
        return body

    def complete(self, n_steps: int, cap: int, messages: list[dict[str, Any]], max_tokens: int) -> Completion:
        """One answer, falling back json_schema -> json_object -> text (in `auto`) where a format fails."""
        calls = prompt_tokens = completion_tokens = 0
        estimated = False
        while True:
            if self.cancel.is_set():
                raise Cancelled
            if self.stopped is not None:
                raise APIStopError(self.stopped)
            probing = not self.confirmed
            if probing:
                self._probe.acquire()  # one probe at a time: the others wait for its verdict
            try:
                if probing and self.confirmed:
                    continue
                mode = self.mode
                try:
                    c = self._send(self.body(n_steps, cap, messages, max_tokens, mode), messages)
                except _FormatUnsupported as e:
                    if self.fixed:
                        raise self._stop(f"{self.endpoint} does not support --response-format {mode}: {e}; try --response-format auto") from None
                    self._fall_back(mode, f"rejects response_format {mode}: {e}")
                    continue
                calls += 1
                prompt_tokens += c.prompt_tokens
                completion_tokens += c.completion_tokens
                estimated = estimated or c.usage_estimated
                if probing and (self.fixed or mode == "text"):
                    self._confirm(mode)
                elif probing and c.refusal is None:
                    if is_strict_json(c.text):
                        self._confirm(mode)
                    elif c.finish_reason != "length":  # a cut-off answer says nothing about the format
                        self._fall_back(mode, f"answered 200 but ignored response_format {mode} (the answer is not JSON)")
                        if not _has_json_object(c.text):
                            continue  # unusable: ask again in the next format
                return Completion(c.text, c.refusal, prompt_tokens, completion_tokens, c.finish_reason, calls, estimated)
            finally:
                if probing:
                    self._probe.release()

    def _stop(self, message: str) -> APIStopError:
        """The error that stops the run; remembered, so that requests not yet sent are never sent."""
        with self._lock:
            self.stopped = self.stopped or message
        return APIStopError(message)

    def _confirm(self, mode: str) -> None:
        with self._lock:
            self.confirmed = True
            if not self.fixed:
                with _LEARNED_LOCK:
                    _LEARNED[(self.endpoint, self.model)] = mode

    def _fall_back(self, mode: str, why: str) -> None:
        with self._lock:
            if self.mode != mode:  # another thread fell back already
                return
            self.mode = MODES[MODES.index(mode) + 1]
            if self.mode == MODES[-1]:
                self._confirm(self.mode)
        log.warning("%s %s; using response_format %s from now on", self.endpoint, self.redact(why), self.mode)

    def retrying(self, call: Callable[[], T]) -> T:
        """`call()` under the retry policy (the Batch API's requests). Other 4xx errors propagate."""
        return self._attempts(call, chat=False)

    def _send(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> Completion:
        return self._attempts(lambda: self._call(body, messages), chat=True, has_format="response_format" in body)

    def _attempts(self, call: Callable[[], T], chat: bool, has_format: bool = False) -> T:
        attempt = timeouts = 0
        while True:
            if self.cancel.is_set():
                raise Cancelled
            if self.stopped is not None:
                raise APIStopError(self.stopped)
            counts = True
            try:
                result = call()
                with self._lock:
                    self._failures = 0
                return result
            except self._openai.APIStatusError as e:
                status, detail = e.status_code, self.redact(server_detail(e))
                if status in (401, 403) or e.code == "insufficient_quota":
                    raise self._stop(self._stop_message(e, detail)) from None
                if has_format and status in (400, 422, 500) and _mentions(e, FORMAT_HINTS):
                    raise _FormatUnsupported(detail) from None
                if self.stream and self._stream_options and status in (400, 422) and _mentions(e, ("stream_options",)):
                    self._stream_options = False
                    continue
                if chat and _model_problem(e):
                    raise self._stop(f"{self.endpoint}: model {self.model!r} cannot be used there (HTTP {status}): {detail}. Name a served model with --model") from None
                if chat and status == 404:
                    raise self._stop(f"{self.endpoint}/chat/completions: HTTP 404 ({detail}): check --base-url (it usually ends in /v1) and --model") from None
                if status not in RETRY_STATUS and status < 500:
                    if not chat:
                        raise  # the Batch API's caller judges its own 4xx
                    raise RequestError(f"HTTP {status}: {detail}") from None
                wait = retry_after(e.response.headers)
                problem = f"HTTP {status}: {detail}"
                counts = status != 429  # being rate-limited is not the server failing
            except self._openai.APITimeoutError:
                problem = f"no answer within --timeout {self.timeout:g} s"
                if chat:
                    self.on_timeout(f"gave no answer within --timeout {self.timeout:g} s")
                    self._failed(problem)
                    raise TimedOut(problem) from None
                timeouts += 1
                if timeouts > TIMEOUT_RETRIES:
                    raise RequestError(f"{problem}, twice") from None
                wait = 0.0
            except self._openai.APIConnectionError as e:
                wait, problem = None, self.redact(f"connection error: {e.message}")
            except self._openai.APIError as e:  # an error event inside a stream
                raise RequestError(self.redact(f"the server failed mid-answer: {server_detail(e)}")) from None
            if counts:
                self._failed(problem)
            attempt += 1
            if attempt > self.max_retries:
                raise RequestError(f"{problem}; gave up after {attempt} attempts")
            if wait is not None and wait > MAX_RETRY_AFTER:
                raise self._stop(
                    f"{self.endpoint} asks to wait {wait:,.0f} s before retrying (Retry-After, after {problem}); "
                    f"critstep waits at most {MAX_RETRY_AFTER:.0f} s: run again later (answers so far are kept)"
                )
            if wait is None:
                wait = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            with self._lock:
                self.retries += 1
            message = f"retry {attempt}/{self.max_retries} in {wait:.1f} s after {problem}"
            if wait >= LOUD_WAIT:
                log.warning("%s: %s", self.endpoint, message)
            self.on_event(message)
            self.sleep(wait)

    def _failed(self, problem: str) -> None:
        with self._lock:
            self._failures += 1
            tripped = self._failures >= self.max_consecutive_failures
        if tripped:
            raise self._stop(
                f"{self.endpoint} failed {self.max_consecutive_failures} requests in a row (last: {problem}): stopping. "
                "Answers so far are kept; run again when the server is back"
            )

    def _call(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> Completion:
        if not self.stream:
            response = self.client.chat.completions.create(**body)
            return self._completion(response, messages)
        extra = {"stream_options": {"include_usage": True}} if self._stream_options else {}
        stream = self.client.chat.completions.create(**body, stream=True, **extra)
        try:
            kind = stream.response.headers.get("content-type", "")
            if "event-stream" not in kind:
                raw = stream.response.read().decode("utf-8", "replace")
                try:
                    data = json.loads(raw)  # a server that ignored `stream`
                except ValueError:
                    data = raw
                return self._completion(data, messages)
            parts: list[str] = []
            refusal: list[str] = []
            finish = None
            usage: Any = None
            for chunk in stream:
                if self.cancel.is_set():
                    raise Cancelled
                usage = chunk.usage or usage
                for choice in chunk.choices or []:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        parts.append(delta.content)
                    if delta is not None and getattr(delta, "refusal", None):
                        refusal.append(delta.refusal)
                    finish = choice.finish_reason or finish
            if finish is None:  # the stream ended without a finish_reason: the server gave the answer up
                self.on_timeout(f"ended a streamed answer unfinished ({len(''.join(parts)):,} characters)")
                raise CutShort("the server ended the answer before it was finished")
            usage_dict = usage.model_dump(warnings=False) if usage is not None else None
            return make_completion("".join(parts), "".join(refusal) or None, finish, usage_dict, messages)
        finally:
            stream.close()  # an abandoned answer closes its connection: the server stops generating

    def _completion(self, response: Any, messages: list[dict[str, Any]]) -> Completion:
        if not isinstance(response, dict):
            response = response.model_dump(warnings=False) if hasattr(response, "model_dump") else response
        if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
            snippet = " ".join(str(response).split())[:80]
            what = "an HTML page" if "<html" in str(response).lower() or "<!doctype" in str(response).lower() else "something else"
            raise self._stop(
                self.redact(f"{self.endpoint} answered with {what} ({snippet!r}), not an OpenAI chat completion: "
                            "is --base-url the API root (it usually ends in /v1)?")
            )  # fmt: skip
        return completion_from(response, messages)

    def _stop_message(self, e: Any, detail: str) -> str:
        if e.code == "insufficient_quota":
            why = "the account has no quota left (insufficient_quota): add credit or use another key"
        elif e.status_code == 401:
            why = "the API key was rejected (HTTP 401): check OPENAI_API_KEY (or the variable named by --api-key-env)"
        else:
            why = f"access denied (HTTP 403) for model {self.model}"
        return self.redact(f"{self.endpoint}: {why}. Server said: {detail}")


def usage_tokens(usage: Any) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens as reported, each None when missing, negative or not a number."""
    if not isinstance(usage, dict):
        return None, None

    def valid(value: Any) -> int | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            return None
        return int(value)

    return valid(usage.get("prompt_tokens")), valid(usage.get("completion_tokens"))


def _has_json_object(text: str | None) -> bool:
    try:
        return isinstance(parse_answer(text), dict)
    except ValueError:
        return False


def completion_from(response: Any, messages: list[dict[str, Any]]) -> Completion:
    """A `Completion` from a ChatCompletion object or the same as a plain dict (Batch API output)."""
    if not isinstance(response, dict):
        response = response.model_dump()
    choices = response.get("choices") or [{}]
    message = choices[0].get("message") or {}
    return make_completion(message.get("content"), message.get("refusal"), choices[0].get("finish_reason"), response.get("usage"), messages)


def make_completion(text: str | None, refusal: str | None, finish: str | None, usage: Any, messages: list[dict[str, Any]]) -> Completion:
    """A `Completion` whose tokens are the server's, or estimated where the server gave none (or nonsense).

    A missing `usage` must not make an answer free, nor a negative one refund it: either way the
    tokens are estimated from the text (characters / 4), as the offline estimate does.
    """
    prompt, completion = usage_tokens(usage)
    estimated = prompt is None or completion is None
    if estimated:
        log.debug("no usable token usage in the answer (%r): estimated from the text", usage)
        prompt = estimate_tokens(messages) if prompt is None else prompt
        completion = math.ceil(len(text or refusal or "") / 4) if completion is None else completion
    return Completion(text, refusal, prompt, completion, finish, 1, estimated)
