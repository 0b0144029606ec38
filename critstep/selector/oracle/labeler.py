"""The labeling run: cache first, then bounded concurrent requests under a budget, then validation.

`OracleLabeler.label` never guesses: a trajectory gets the model's validated answer, or is
recorded as failed with the reason, or (budget or call limit reached, run stopped or interrupted)
is left unlabeled for the next run. Everything paid for is in the cache before `label` returns.

Requests run in daemon threads, so Ctrl-C returns at once: in-flight requests are cancelled
(streams closed, so local servers stop generating), answers that arrive within a short grace
period are kept, and the run reports itself interrupted.
"""

from __future__ import annotations

import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from critstep.errors import ConfigError
from critstep.labels import CriticalStep, TrajectoryLabels
from critstep.selector.oracle.cache import LabelCache, cache_key
from critstep.selector.oracle.client import APIStopError, Cancelled, ChatClient, Completion, CutShort, RequestError, TimedOut
from critstep.selector.oracle.config import OracleConfig
from critstep.selector.oracle.endpoint import endpoint_id, is_openai, resolve_model
from critstep.selector.oracle.pricing import PriceTable, estimate_tokens, load_prices
from critstep.selector.oracle.prompt import PROMPT_VERSION, Request, build_request, repair_messages
from critstep.selector.oracle.results import CostEstimate, LabelRun
from critstep.selector.oracle.schema import AnswerError, parse_answer, validate_answer
from critstep.trajectory import Trajectory

log = logging.getLogger("critstep.oracle")

# Completion tokens of an answer, from the seed labels' JSON (characters / 4): about 30 for the
# plan and 31 per chosen step. The estimate assumes the cap is used in full, so it errs high.
PLAN_TOKENS = 40
TOKENS_PER_CHOICE = 31
# In-flight requests hold a reservation of their worst case: the prompt estimate plus this
# margin, and the full max_tokens of output.
PROMPT_MARGIN = 1.25
# Seconds Ctrl-C waits for in-flight answers (already being paid for) before returning.
CANCEL_GRACE = 5.0


class Budget:
    """Spent dollars plus reservations for requests in flight, checked against a limit."""

    def __init__(self, limit: float | None):
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0
        self._lock = threading.Lock()

    def try_reserve(self, amount: float) -> bool:
        with self._lock:
            if self.limit is not None and self.spent + self.reserved + amount > self.limit + 1e-12:
                return False
            self.reserved += amount
            return True

    def settle(self, reserved: float, actual: float) -> None:
        with self._lock:
            self.reserved -= reserved
            self.spent += max(0.0, actual)


@dataclass
class Job:
    trajectory: Trajectory
    request: Request
    key: str
    max_tokens: int
    reserve: float = 0.0
    repair_reserve: float = 0.0
    timed_out: bool = False  # sent once already and got no answer in time
    shared_server: bool = False  # sent while other requests of this run could be in flight


@dataclass
class Outcome:
    """What one trajectory's requests produced; built in a worker, merged by the main thread."""

    job: Job
    entry: dict[str, Any] | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    error: str | None = None
    stop: str | None = None
    over_budget: bool = False
    cancelled: bool = False
    timed_out: bool = False
    cut_short: bool = False  # the server ended the answer to serve another request
    from_cache: bool = False  # another run sharing the cache answered it while we waited
    estimated_usage: bool = False
    repair_cost: float = 0.0  # already settled with the budget when it was paid

    def add(self, c: Completion, cost: float) -> None:
        self.calls += c.calls
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        self.cost += cost
        self.estimated_usage = self.estimated_usage or c.usage_estimated


class OracleLabeler:
    """Labels trajectories with an LLM following ATLaS; see `OracleConfig` for the knobs."""

    def __init__(self, config: OracleConfig | None = None, prices: PriceTable | None = None):
        self.config = config or OracleConfig()
        self.prices = prices or load_prices(self.config.prices_path)
        self.cache = LabelCache(self.config.resolved_cache_path())
        self.endpoint = endpoint_id(self.config.resolved_base_url())
        self._model: str | None = None
        self._client: ChatClient | None = None
        self._limit = self.config.concurrency
        self._bar: Any = None

    @property
    def model(self) -> str:
        """The model asked: as configured, else gpt-4o at OpenAI, else the one the server serves."""
        if self._model is None:
            c = self.config
            base_url = c.resolved_base_url()
            key = "" if c.model is not None or is_openai(base_url) else c.resolved_api_key()  # asked only to list models
            self._model = resolve_model(c.model, base_url, key, c.timeout)
        return self._model

    @property
    def oracle(self) -> dict[str, str]:
        """What every label records about where it came from (never the key)."""
        return {"model": self.model, "endpoint": self.endpoint}

    @property
    def client(self) -> ChatClient:
        """Created on first use, so `estimate` and fully cached runs need no key and no network."""
        if self._client is None:
            c = self.config
            self._client = ChatClient(
                self.model, c.resolved_api_key(), c.resolved_base_url(), c.timeout, c.max_retries, c.backoff_base, c.backoff_max,
                response_format=c.response_format, stream=c.stream, max_consecutive_failures=c.max_consecutive_failures,
            )  # fmt: skip
            self._client.on_event = self._event
            self._client.on_timeout = self._slow_down
        return self._client

    def _job(self, trajectory: Trajectory) -> Job:
        request = build_request(trajectory, self.config.ratio)
        key = cache_key(self.model, self.endpoint, PROMPT_VERSION, self.config.ratio, request.messages)
        max_tokens = self.config.output_tokens(request.cap)
        prompt = int(estimate_tokens(request.messages) * PROMPT_MARGIN)
        worst = self.prices.cost(self.model, prompt, max_tokens, self.config.batch)
        # A repair request is always synchronous, at the standard price, with a longer prompt.
        repair = self.prices.cost(self.model, prompt + 2 * max_tokens, max_tokens)
        return Job(trajectory, request, key, max_tokens, worst, repair)

    def _cached(self, job: Job) -> dict[str, Any] | None:
        entry = self.cache.get(job.key)
        if entry is not None and entry.get("status") == "failed" and self.config.retry_failed:
            return None
        return entry

    def estimate(self, trajectories: Sequence[Trajectory]) -> CostEstimate:
        """Tokens and dollars of labeling `trajectories` now (cached answers are free), offline."""
        model = self.model
        prompt = completion = requests = cached = empty = 0
        for t in trajectories:
            if t.n_steps == 0:
                empty += 1
                continue
            job = self._job(t)
            if self._cached(job) is not None:
                cached += 1
                continue
            requests += 1
            prompt += estimate_tokens(job.request.messages)
            completion += PLAN_TOKENS + TOKENS_PER_CHOICE * job.request.cap
        return CostEstimate(
            model, len(trajectories), requests, cached, empty, prompt, completion,
            self.prices.cost(model, prompt, completion), self.prices.cost(model, prompt, completion, batch=True),
            self.prices.known(model), self.prices.as_of,
        )  # fmt: skip

    def label(self, trajectories: Sequence[Trajectory], max_cost: float | None = None, max_calls: int | None = None) -> LabelRun:
        """Label every trajectory that the budget (`max_cost` dollars, `max_calls` trajectories sent) allows."""
        limit = max_cost if max_cost is not None else self.config.max_cost
        if limit is not None and not (math.isfinite(limit) and limit >= 0):
            raise ConfigError(f"a dollar budget must be a finite number >= 0, got {limit}")
        if limit is not None and not self.prices.known(self.model):
            raise ConfigError(
                f"a budget of ${limit:g} cannot be enforced: no price for {self.model!r} in {self.prices.path} "
                "(add the model's price there, or drop the budget: a local server costs nothing)"
            )
        run = LabelRun(self.model, price_known=self.prices.known(self.model), oracle=self.oracle)
        budget = Budget(limit)
        todo: list[Job] = []
        for t in trajectories:
            if t.n_steps == 0:
                usage = _usage(0, 0, 0, 0.0, cached=False)
                run.labels[t.id] = TrajectoryLabels(t.id, 0, [], plan="", extra={"usage": usage, "oracle": self.oracle})
                continue
            job = self._job(t)
            entry = self._cached(job)
            if entry is not None:
                run.cache_hits += 1
                self._record(run, job, entry, cached=True)
            else:
                todo.append(job)
        if todo:
            if self.config.batch:
                from critstep.selector.oracle.batch import run_batch

                run_batch(self, todo, run, budget, max_calls)
            else:
                self._run_concurrent(todo, run, budget, max_calls)
        return run

    # --- the synchronous run ---------------------------------------------------------------
    def _run_concurrent(self, todo: list[Job], run: LabelRun, budget: Budget, max_calls: int | None) -> None:
        from tqdm import tqdm

        client = self.client  # created here, in the main thread
        pending = list(reversed(todo))
        results: queue.Queue[tuple[Job, Outcome | BaseException]] = queue.Queue()
        in_flight: dict[str, Job] = {}  # by trajectory id
        sent = 0
        over_budget: float | None = None
        self._bar = tqdm(total=len(todo), desc="labeling", unit="traj", disable=not self.config.progress, file=sys.stderr)

        def work(job: Job) -> None:
            try:
                results.put((job, self._ask(job, budget)))
            except BaseException as e:  # handed to the main thread, which re-raises it
                results.put((job, e))

        def take(job: Job, outcome: Outcome | BaseException) -> None:
            in_flight.pop(job.trajectory.id, None)
            if isinstance(outcome, BaseException):
                raise outcome
            budget.settle(job.reserve, outcome.cost)
            # Once more, when the (halved) concurrency has room for it; an answer the server dropped
            # for another of our requests goes again until it runs alone (the concurrency halves each time).
            if outcome.timed_out and (not job.timed_out or (outcome.cut_short and job.shared_server)):
                job.timed_out = True
                pending.append(job)
                return
            self.merge(run, outcome)
            self._bar.update(1)
            self._bar.set_postfix_str(self._status(run, len(in_flight)), refresh=False)

        try:
            while pending or in_flight:
                while pending and run.stopped is None and len(in_flight) < self._limit:
                    job = pending[-1]
                    if max_calls is not None and sent >= max_calls and not job.timed_out:
                        run.stopped = f"call limit of {max_calls} trajectories reached"
                    elif not budget.try_reserve(job.reserve):
                        over_budget = job.reserve
                        run.stopped = "budget"
                    else:
                        pending.pop()
                        sent += int(not job.timed_out)  # a trajectory sent again is not a new call
                        in_flight[job.trajectory.id] = job
                        job.shared_server = self._limit > 1
                        threading.Thread(target=work, args=(job,), name="critstep-oracle", daemon=True).start()
                if not in_flight:
                    break
                take(*results.get())
        except KeyboardInterrupt:
            client.cancel.set()
            run.interrupted = True
            run.stopped = "interrupted (Ctrl-C); answers received so far are cached"
            deadline = time.monotonic() + CANCEL_GRACE
            while in_flight and time.monotonic() < deadline:
                try:
                    job, outcome = results.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if isinstance(outcome, Outcome) and not outcome.cancelled:
                    take(job, outcome)
                else:
                    in_flight.pop(job.trajectory.id, None)
                    run.unlabeled.append(job.trajectory.id)
            run.unlabeled.extend(in_flight)  # abandoned: their connections are closed
        finally:
            self._bar.close()
            self._bar = None
        if run.stopped == "budget":
            run.stopped = (
                f"budget of ${budget.limit:,.2f} reached: spent ${budget.spent:,.4f}; the next request "
                f"could cost up to ${over_budget or 0:,.4f} and no longer fits"
            )
        run.unlabeled.extend(job.trajectory.id for job in reversed(pending))

    def _status(self, run: LabelRun, in_flight: int) -> str:
        parts = [f"ok {len(run.labels)}", f"failed {len(run.failed)}", f"in flight {in_flight}"]
        if self._client is not None and self._client.retries:
            parts.append(f"retries {self._client.retries}")
        return ", ".join(parts)

    def _event(self, message: str) -> None:
        """A retry or wait, from a worker: shown in the progress line (logged when there is none)."""
        bar = self._bar
        if bar is not None and not bar.disable:
            bar.set_postfix_str(message[:100])
        else:
            log.info("%s: %s", self.endpoint, message)

    def _slow_down(self, why: str) -> None:
        """A request timed out or was cut short: the server cannot keep up, so fewer requests go at once."""
        if self._limit > 1:
            self._limit = max(1, self._limit // 2)
            log.warning("%s %s: sending %d request(s) at a time from now on", self.endpoint, why, self._limit)

    def _ask(self, job: Job, budget: Budget) -> Outcome:
        """Runs in a worker thread: claim the key, then one request, validated, and at most one repair."""
        outcome = Outcome(job)
        client = self.client
        try:
            with self.cache.claim(job.key, client.cancel):
                self.cache.refresh()
                entry = self._cached(job)
                if entry is not None:  # another run sharing the cache bought it meanwhile
                    outcome.entry, outcome.from_cache = entry, True
                    return outcome
                completion = client.complete(job.request.n_steps, job.request.cap, job.request.messages, job.max_tokens)
                return self.finish(job, completion, outcome, budget, batch=False)
        except TimedOut as e:
            outcome.timed_out, outcome.cut_short = True, isinstance(e, CutShort)
            outcome.error = f"{e}, twice: {e.hint}"
        except RequestError as e:
            outcome.error = str(e)
        except APIStopError as e:
            outcome.stop = str(e)
        except Cancelled:
            outcome.cancelled = True
        return outcome

    def finish(self, job: Job, completion: Completion, outcome: Outcome, budget: Budget, batch: bool) -> Outcome:
        """Validate an answer (repairing it once if needed) and cache the result."""
        outcome.add(completion, self._cost(completion, batch))
        try:
            plan, critical = _check(completion, job.request)
        except AnswerError as problem:
            if not budget.try_reserve(job.repair_reserve):
                outcome.over_budget = True
                return outcome
            try:
                answer = completion.text or completion.refusal or ""
                r = job.request
                repaired = self.client.complete(r.n_steps, r.cap, repair_messages(r, answer, str(problem)), job.max_tokens)
            except (RequestError, APIStopError) as e:
                budget.settle(job.repair_reserve, 0.0)
                outcome.error = f"invalid answer ({problem}); the repair request failed: {e}"
                outcome.stop = str(e) if isinstance(e, APIStopError) else None
                return outcome
            except Cancelled:
                budget.settle(job.repair_reserve, 0.0)
                outcome.cancelled = True
                return outcome
            repair_cost = self._cost(repaired, batch=False)
            budget.settle(job.repair_reserve, repair_cost)
            outcome.add(repaired, 0.0)
            outcome.repair_cost += repair_cost
            try:
                plan, critical = _check(repaired, job.request)
            except AnswerError as again:
                outcome.entry = self._entry(job, outcome, "failed", error=f"invalid answer after one repair request: {again}")
                self.cache.put(outcome.entry)
                return outcome
        outcome.entry = self._entry(job, outcome, "ok", plan=plan, critical=critical)
        self.cache.put(outcome.entry)
        return outcome

    def _cost(self, c: Completion, batch: bool) -> float:
        return self.prices.cost(self.model, c.prompt_tokens, c.completion_tokens, batch)

    def _entry(self, job: Job, outcome: Outcome, status: str, plan: str = "", critical: Sequence[CriticalStep] = (), error: str | None = None) -> dict[str, Any]:
        scrub = self.client.redact  # a server may echo (part of) the key into an answer
        usage = _usage(outcome.calls, outcome.prompt_tokens, outcome.completion_tokens, outcome.cost + outcome.repair_cost, cached=False)
        if outcome.estimated_usage:
            usage["estimated"] = True
        return {
            "key": job.key,
            "id": job.trajectory.id,
            "model": self.model,
            "endpoint": self.endpoint,
            "prompt_version": PROMPT_VERSION,
            "ratio": self.config.ratio,
            "status": status,
            "plan": scrub(plan),
            "critical": [{"step": c.step, "category": c.category, "reason": scrub(c.reason)} for c in critical],
            "error": scrub(error) if error is not None else None,
            "usage": usage,
        }

    def merge(self, run: LabelRun, outcome: Outcome) -> None:
        """Main thread only: fold one outcome into the run's totals and results."""
        run.calls += outcome.calls
        run.prompt_tokens += outcome.prompt_tokens
        run.completion_tokens += outcome.completion_tokens
        run.cost_usd += outcome.cost + outcome.repair_cost
        run.estimated_usage += int(outcome.estimated_usage)
        tid = outcome.job.trajectory.id
        if outcome.entry is not None:
            run.cache_hits += int(outcome.from_cache)
            self._record(run, outcome.job, outcome.entry, cached=outcome.from_cache)
        elif outcome.stop is not None or outcome.over_budget or outcome.cancelled:
            run.unlabeled.append(tid)
            if outcome.stop is not None:
                run.stopped, run.fatal = outcome.stop, True
            elif outcome.over_budget and run.stopped is None:
                run.stopped = "budget reached before a repair request"
        else:
            run.failed[tid] = outcome.error or "unknown error"
            run.usage[tid] = _usage(outcome.calls, outcome.prompt_tokens, outcome.completion_tokens, outcome.cost + outcome.repair_cost, cached=False)

    def _record(self, run: LabelRun, job: Job, entry: dict[str, Any], cached: bool) -> None:
        t = job.trajectory
        usage = {**entry.get("usage", {}), "cached": cached}
        run.usage[t.id] = usage
        oracle = {"model": entry.get("model", self.model), "endpoint": entry.get("endpoint", self.endpoint)}
        if entry.get("status") == "ok":
            critical = [CriticalStep(c["step"], c["category"], c.get("reason", "")) for c in entry["critical"]]
            extra = {"usage": usage, "oracle": oracle}
            run.labels[t.id] = TrajectoryLabels(t.id, t.n_steps, critical, plan=entry.get("plan", ""), extra=extra)
        else:
            run.failed[t.id] = str(entry.get("error"))
            run.cached_failures += int(cached)


def _check(completion: Completion, request: Request) -> tuple[str, list[CriticalStep]]:
    if completion.refusal:
        raise AnswerError(f"the model refused: {completion.refusal}")
    try:
        value = parse_answer(completion.text)
    except AnswerError as e:
        if completion.finish_reason == "length":
            raise AnswerError(f"{e} (the answer was cut off at max_tokens)") from None
        if not (completion.text or "").strip():
            raise AnswerError(f"{e} (finish_reason {completion.finish_reason!r}, {completion.completion_tokens} completion tokens)") from None
        raise
    return validate_answer(value, request.n_steps, request.cap)


def _usage(calls: int, prompt: int, completion: int, cost: float, cached: bool) -> dict[str, Any]:
    return {"calls": calls, "prompt_tokens": prompt, "completion_tokens": completion, "cost_usd": round(cost, 6), "cached": cached}
