"""The data model every selector and the tuner share.

A trajectory is an id, its messages and metadata. A *step* is an assistant message; steps are
indexed 0-based over the assistant messages of the trajectory. Every other message (system, user,
tool) is context. The one exception is an instruction acknowledgement ("OK" before the task in
ShareGPT/AgentInstruct data): it is an assistant message kept as context and never a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from critstep.errors import InputError

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    """One chat message in OpenAI form.

    `train` is the per-message training flag read from the input (`weight` or `loss`), if any.
    `extra` keeps keys critstep does not interpret so that writing back loses nothing.
    """

    role: str
    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    acknowledgement: bool = False
    train: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_step(self) -> bool:
        return self.role == "assistant" and not self.acknowledgement

    def text(self) -> str:
        """The content plus any tool calls, as one string (what the agent 'said')."""
        if not self.tool_calls:
            return self.content
        calls = "\n".join(_format_tool_call(c) for c in self.tool_calls)
        return f"{self.content}\n{calls}" if self.content else calls


def _format_tool_call(call: dict[str, Any]) -> str:
    fn = call.get("function", call)
    return f"{fn.get('name', '?')}({fn.get('arguments', '')})"


@dataclass(frozen=True)
class Step:
    """A step seen together with its surroundings: what it reacts to and what it causes."""

    index: int
    message_index: int
    message: Message
    observation_before: str | None
    observation_after: str | None

    @property
    def text(self) -> str:
        return self.message.text()


@dataclass(frozen=True)
class Origin:
    """Where a trajectory was read from and in which layout, so it can be written back alike."""

    format: str
    path: str
    line: int
    messages_key: str = "messages"
    role_key: str = "role"
    content_key: str = "content"


def record_id(value: Any, origin: Origin, fallback: str) -> str:
    """A record's id: a string as is, an integer as its decimal string (datasets number their
    records), and `fallback` when absent. Anything else (a list, a float, an empty string) is an
    error: stringified silently it would never match the id a label file gives."""
    if value is None:
        return fallback
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise InputError(f"'id' must be a non-empty string or an integer, got {value!r}", origin.path, origin.line)
    return value


@dataclass
class Trajectory:
    """An id, its messages, and metadata (env, source, success, and any other record fields)."""

    id: str
    messages: list[Message]
    metadata: dict[str, Any] = field(default_factory=dict)
    origin: Origin | None = field(default=None, compare=False)

    @property
    def step_message_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.messages) if m.is_step]

    @property
    def n_steps(self) -> int:
        return sum(1 for m in self.messages if m.is_step)

    @property
    def env(self) -> str:
        return str(self.metadata.get("env") or "unknown")

    @property
    def task(self) -> str:
        """The user message that states the task: the first one, or, where a generic instruction
        was acknowledged ("OK", ShareGPT/AgentInstruct/ETO data), the first one after the
        acknowledgement. That is the task as corpora that keep the instruction in the system
        prompt present it, so features see the task, not the instruction's boilerplate."""
        return self.messages[self.task_index].content if self.task_index is not None else ""

    @property
    def task_index(self) -> int | None:
        """The position of the message `task` comes from, if any."""
        start = next((i + 1 for i, m in enumerate(self.messages) if m.acknowledgement), 0)
        return next((i for i in range(start, len(self.messages)) if self.messages[i].role == "user"), None)

    def steps(self) -> list[Step]:
        out: list[Step] = []
        positions = self.step_message_indices
        for k, mi in enumerate(positions):
            out.append(
                Step(
                    index=k,
                    message_index=mi,
                    message=self.messages[mi],
                    observation_before=self._observation(range(mi - 1, -1, -1)),
                    observation_after=self._observation(range(mi + 1, len(self.messages))),
                )
            )
        return out

    def _observation(self, positions: range) -> str | None:
        """The user/tool text between this step and the neighbouring assistant message in one direction.

        Consecutive tool results are joined, so a step that fires several tool calls sees all
        their outputs as one observation. An acknowledgement bounds it like a step: the first step
        reacts to the task, not to the instruction acknowledged before it.
        """
        parts: list[str] = []
        for i in positions:
            m = self.messages[i]
            if m.role == "assistant":
                break
            if m.role in ("user", "tool"):
                parts.append(m.content)
        if not parts:
            return None
        if positions.step < 0:
            parts.reverse()
        return "\n".join(parts)

    def context_chars(self) -> int:
        return sum(len(m.text()) for m in self.messages if not m.is_step)

    def step_chars(self) -> int:
        return sum(len(m.text()) for m in self.messages if m.is_step)
