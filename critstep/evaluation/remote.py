"""The agent behind any OpenAI-compatible chat server (vLLM, llama.cpp, Ollama, or OpenAI itself).

The heavy part of an evaluation, generating every step, then runs where the GPUs are: each step's
gold prefix goes out as a chat request (greedy: temperature 0) and the reply, text or structured
tool calls, is the agent's turn. Servers that batch (vLLM) are kept busy with `concurrency`
requests in flight. Chat servers do not return the log-probabilities of a given turn, so the gold
turns' NLL is left out (null) with this backend. The API key comes from `OPENAI_API_KEY` only
(servers that need none accept any placeholder).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from critstep.errors import ConfigError, ModelError
from critstep.evaluation.agent import StepOutput, Timing
from critstep.formats.openai import chat_message
from critstep.selector.oracle.client import redact
from critstep.selector.oracle.endpoint import endpoint_id
from critstep.trajectory import Trajectory


class RemoteModel:
    """Greedy chat completions from `model` at `base_url`, with the client's own retries."""

    def __init__(self, model: str, base_url: str, max_new_tokens: int = 128, concurrency: int = 8, timeout: float = 120.0, max_retries: int = 3):
        import openai

        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        self._openai = openai
        self._key = os.environ.get("OPENAI_API_KEY")  # kept only to scrub it (and any 8+ character piece) from errors
        self.client = openai.OpenAI(api_key=self._key or "EMPTY", base_url=base_url, timeout=timeout, max_retries=max_retries)
        self.model = model
        self.base_url = base_url
        self.max_new_tokens = max_new_tokens
        self.concurrency = concurrency
        self.timing = Timing()
        self._stopped: ModelError | None = None

    def evaluate_trajectories(self, items: Iterable[tuple[Trajectory, Sequence[int] | None]]) -> Iterator[tuple[Trajectory, list[StepOutput]]]:
        """Every requested step of every trajectory goes to the pool at once (a batching server is
        kept busy across trajectories); results come back per trajectory, in input order."""
        started = time.perf_counter()
        pool = ThreadPoolExecutor(self.concurrency)
        try:
            submitted = []
            for trajectory, steps in items:
                messages = [chat_message(m) for m in trajectory.messages]
                wanted = set(range(trajectory.n_steps) if steps is None else steps)
                futures = [pool.submit(self._step, k, messages[:i]) for k, i in enumerate(trajectory.step_message_indices) if k in wanted]
                submitted.append((trajectory, futures))
            for trajectory, futures in submitted:
                outputs = [f.result() for f in futures]
                if self._stopped is not None:
                    raise self._stopped
                yield trajectory, outputs
        finally:
            pool.shutdown(cancel_futures=True)
            self.timing.decode_s += time.perf_counter() - started

    def _step(self, step: int, messages: list[dict[str, Any]]) -> StepOutput:
        if self._stopped is not None:  # a request stopped the run (a bad key): the queued ones stay unsent
            return StepOutput(step, "", error="not sent")
        try:
            content, tool_calls = self._complete(messages)
        except ModelError as e:
            self._stopped = e
            return StepOutput(step, "", error=str(e))
        except self._openai.OpenAIError as e:  # this step fails (counted as a miss); the run goes on
            self.timing.errors += 1
            return StepOutput(step, "", error=redact(f"{type(e).__name__}: {e}", self._key))
        return StepOutput(step, content, tool_calls=tool_calls)

    def _complete(self, messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]] | None]:
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=0, max_tokens=self.max_new_tokens
            )
        except self._openai.APIStatusError as e:
            if e.status_code in (401, 403, 404):  # a wrong key, model name or URL fails every request alike
                raise ModelError(redact(f"{endpoint_id(self.base_url)}: HTTP {e.status_code} for model {self.model!r}: {e.message}", self._key)) from None
            raise
        choice = response.choices[0].message if response.choices else None
        if choice is None:
            return "", None
        calls = [c.model_dump() for c in choice.tool_calls] if choice.tool_calls else None
        self.timing.generated_tokens += int(getattr(response.usage, "completion_tokens", 0) or 0)
        return (choice.content or "").strip(), calls

    def respond(self, messages: list[dict[str, Any]]) -> str:
        """The next turn; a failed request (after retries) is an empty turn, which the environment rejects."""
        started = time.perf_counter()
        try:
            content, tool_calls = self._complete(messages)
        except self._openai.OpenAIError:
            self.timing.errors += 1
            return ""
        finally:
            self.timing.decode_s += time.perf_counter() - started
        if tool_calls and not content:  # live environments take text actions
            fn = tool_calls[0].get("function", {})
            content = f"{fn.get('name', '')}({fn.get('arguments', '')})"
        return content

    def reset_chat(self) -> None:
        """Nothing to reset: every request carries the whole conversation."""
