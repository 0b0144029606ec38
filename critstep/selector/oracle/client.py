"""Chat completions through the official `openai` client, with our own retry policy.

The client's built-in retries are switched off so that the policy is explicit and testable:
429, 5xx, time-outs and dropped connections are retried with exponential backoff (honouring
`Retry-After`); 401, 403 and `insufficient_quota` stop the whole run, because no retry can fix
them and every further request would fail the same way. Error text is scrubbed of the API key
before it goes anywhere.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from critstep.errors import CritstepError
from critstep.selector.oracle.schema import RESPONSE_FORMATS

RETRY_STATUS = {408, 409, 429}
# A Retry-After beyond this is not waited out in one go (the attempt then counts as spent).
MAX_RETRY_AFTER = 300.0
T = TypeVar("T")
FALLBACK_HINTS = ("response_format", "json_schema", "json_object", "structured output", "guided")


class APIStopError(CritstepError):
    """The API refuses this run (bad key, no quota): stop everything, keep what is paid for."""


class RequestError(Exception):
    """One request failed for good (retries spent, or a non-retryable error): its trajectory fails."""


@dataclass(frozen=True)
class Completion:
    text: str | None
    refusal: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


def redact(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


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
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class ChatClient:
    """One model behind one endpoint. Thread-safe; the response-format fallback is shared by all threads."""

    def __init__(
        self,
        model: str,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        import openai

        self._openai = openai
        self.model = model
        self.base_url = base_url
        self._key = api_key
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.sleep = sleep
        self.mode = "json_schema"
        self._mode_lock = threading.Lock()

    def redact(self, text: str) -> str:
        return redact(text, self._key)

    def body(self, messages: list[dict[str, Any]], max_tokens: int, mode: str | None = None) -> dict[str, Any]:
        """The request body (also what a Batch API line carries)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        response_format = RESPONSE_FORMATS[mode or self.mode]
        if response_format is not None:
            body["response_format"] = response_format
        return body

    def complete(self, messages: list[dict[str, Any]], max_tokens: int) -> Completion:
        """One chat completion; falls back json_schema -> json_object -> text where unsupported."""
        while True:
            mode = self.mode
            try:
                body = self.body(messages, max_tokens, mode)
                response = self.retrying(lambda: self.client.chat.completions.create(**body))  # noqa: B023
            except self._openai.APIStatusError as e:
                if e.status_code in (400, 422) and mode != "text" and self._unsupported_format(e):
                    self._fall_back(mode)
                    continue
                raise RequestError(self.redact(f"HTTP {e.status_code}: {e.message}")) from None
            return completion_from(response)

    def retrying(self, call: Callable[[], T]) -> T:
        """`call()` under the retry policy. Other 4xx errors propagate for the caller to judge."""
        attempt = 0
        while True:
            try:
                return call()
            except self._openai.APIStatusError as e:
                status = e.status_code
                if status in (401, 403) or e.code == "insufficient_quota":
                    raise APIStopError(self._stop_message(e)) from None
                if status not in RETRY_STATUS and status < 500:
                    raise
                wait = retry_after(e.response.headers)
                problem = f"HTTP {status}"
            except self._openai.APITimeoutError:
                wait, problem = None, "timed out"
            except self._openai.APIConnectionError as e:
                wait, problem = None, self.redact(f"connection error: {e.message}")
            attempt += 1
            if attempt > self.max_retries:
                raise RequestError(f"{problem}, gave up after {attempt} attempts")
            if wait is None:
                wait = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            self.sleep(min(wait, MAX_RETRY_AFTER))

    def _unsupported_format(self, e: Any) -> bool:
        text = f"{e.message} {e.body}".lower()
        return any(hint in text for hint in FALLBACK_HINTS)

    def _fall_back(self, mode: str) -> None:
        with self._mode_lock:
            if self.mode == mode:  # another thread may have fallen back already
                order = list(RESPONSE_FORMATS)
                self.mode = order[order.index(mode) + 1]

    def _stop_message(self, e: Any) -> str:
        where = self.base_url or "api.openai.com"
        if e.code == "insufficient_quota":
            why = "the account has no quota left (insufficient_quota): add credit or use another key"
        elif e.status_code == 401:
            why = "the API key was rejected (HTTP 401): check OPENAI_API_KEY (or the variable named by --api-key-env)"
        else:
            why = f"access denied (HTTP 403) for model {self.model}"
        return self.redact(f"{where}: {why}. Server said: {e.message}")


def completion_from(response: Any) -> Completion:
    """A `Completion` from a ChatCompletion object or the same as a plain dict (Batch API output)."""
    if not isinstance(response, dict):
        response = response.model_dump()
    choices = response.get("choices") or [{}]
    message = choices[0].get("message") or {}
    usage = response.get("usage") or {}
    return Completion(
        text=message.get("content"),
        refusal=message.get("refusal"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=choices[0].get("finish_reason"),
    )
