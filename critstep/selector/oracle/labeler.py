"""The labeling run: cache first, then bounded concurrent requests under a budget, then validation.

`OracleLabeler.label` never guesses: a trajectory gets the model's validated answer, or is
recorded as failed with the reason, or (budget or call limit reached, run stopped) is left
unlabeled for the next run. Everything paid for is in the cache before `label` returns.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from critstep.labels import CriticalStep, TrajectoryLabels
from critstep.selector.oracle.cache import LabelCache, cache_key
from critstep.selector.oracle.client import APIStopError, ChatClient, Completion, RequestError
from critstep.selector.oracle.config import OracleConfig
from critstep.selector.oracle.pricing import PriceTable, estimate_tokens, load_prices
from critstep.selector.oracle.prompt import PROMPT_VERSION, Request, build_request, repair_messages
from critstep.selector.oracle.results import CostEstimate, LabelRun
from critstep.selector.oracle.schema import AnswerError, parse_answer, validate_answer
from critstep.trajectory import Trajectory

# Completion tokens of an answer, from the seed labels' JSON (characters / 4): about 30 for the
# plan and 31 per chosen step. The estimate assumes the cap is used in full, so it errs high.
PLAN_TOKENS = 40
TOKENS_PER_CHOICE = 31
# In-flight requests hold a reservation of their worst case: the prompt estimate plus this
# margin, and the full max_tokens of output.
PROMPT_MARGIN = 1.25


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
            self.spent += actual


@dataclass
class Job:
    trajectory: Trajectory
    request: Request
    key: str
    max_tokens: int
    reserve: float = 0.0
    repair_reserve: float = 0.0


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
    repair_cost: float = 0.0  # already settled with the budget when it was paid

    def add(self, c: Completion, cost: float) -> None:
        self.calls += 1
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        self.cost += cost


class OracleLabeler:
    """Labels trajectories with an LLM following ATLaS; see `OracleConfig` for the knobs."""

    def __init__(self, config: OracleConfig | None = None, prices: PriceTable | None = None):
        self.config = config or OracleConfig()
        self.prices = prices or load_prices(self.config.prices_path)
        self.cache = LabelCache(self.config.resolved_cache_path())
        self._client: ChatClient | None = None

    @property
    def client(self) -> ChatClient:
        """Created on first use, so `estimate` and fully cached runs need no key and no network."""
        if self._client is None:
            c = self.config
            self._client = ChatClient(
                c.model, c.resolved_api_key(), c.resolved_base_url(), c.timeout, c.max_retries, c.backoff_base, c.backoff_max
            )
        return self._client

    def _job(self, trajectory: Trajectory) -> Job:
        request = build_request(trajectory, self.config.ratio)
        key = cache_key(self.config.model, PROMPT_VERSION, self.config.ratio, request.messages)
        max_tokens = self.config.output_tokens(request.cap)
        prompt = int(estimate_tokens(request.messages) * PROMPT_MARGIN)
        worst = self.prices.cost(self.config.model, prompt, max_tokens, self.config.batch)
        # A repair request is always synchronous, at the standard price, with a longer prompt.
        repair = self.prices.cost(self.config.model, prompt + 2 * max_tokens, max_tokens)
        return Job(trajectory, request, key, max_tokens, worst, repair)

    def _cached(self, job: Job) -> dict[str, Any] | None:
        entry = self.cache.get(job.key)
        if entry is not None and entry.get("status") == "failed" and self.config.retry_failed:
            return None
        return entry

    def estimate(self, trajectories: Sequence[Trajectory]) -> CostEstimate:
        """Tokens and dollars of labeling `trajectories` now (cached answers are free), offline."""
        model = self.config.model
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
        run = LabelRun(self.config.model, price_known=self.prices.known(self.config.model))
        budget = Budget(max_cost if max_cost is not None else self.config.max_cost)
        todo: list[Job] = []
        for t in trajectories:
            if t.n_steps == 0:
                run.labels[t.id] = TrajectoryLabels(t.id, 0, [], plan="", extra={"usage": _usage(0, 0, 0, 0.0, cached=False)})
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

    def _run_concurrent(self, todo: list[Job], run: LabelRun, budget: Budget, max_calls: int | None) -> None:
        from tqdm import tqdm

        queue = list(reversed(todo))
        sent = 0
        in_flight: dict[Future[Outcome], Job] = {}
        bar = tqdm(total=len(todo), desc="labeling", unit="traj", disable=not self.config.progress, file=sys.stderr)
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            while queue or in_flight:
                while queue and run.stopped is None and len(in_flight) < self.config.concurrency:
                    job = queue[-1]
                    if max_calls is not None and sent >= max_calls:
                        run.stopped = f"call limit of {max_calls} trajectories reached"
                    elif not budget.try_reserve(job.reserve):
                        run.stopped = f"budget of ${budget.limit:,.2f} reached (spent ${budget.spent:,.4f}, next request could cost ${job.reserve:,.4f})"
                    else:
                        queue.pop()
                        sent += 1
                        in_flight[pool.submit(self._ask, job, budget)] = job
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    job = in_flight.pop(future)
                    outcome = future.result()
                    budget.settle(job.reserve, outcome.cost)
                    self.merge(run, outcome)
                    bar.update(1)
        bar.close()
        run.unlabeled.extend(job.trajectory.id for job in reversed(queue))

    def _ask(self, job: Job, budget: Budget) -> Outcome:
        """Runs in a worker thread: one request, validated, and at most one repair request."""
        outcome = Outcome(job)
        try:
            completion = self.client.complete(job.request.messages, job.max_tokens)
        except RequestError as e:
            outcome.error = str(e)
            return outcome
        except APIStopError as e:
            outcome.stop = str(e)
            return outcome
        return self.finish(job, completion, outcome, budget, batch=False)

    def finish(self, job: Job, completion: Completion, outcome: Outcome, budget: Budget, batch: bool) -> Outcome:
        """Validate an answer (repairing it once if needed) and cache the result."""
        model = self.config.model
        outcome.add(completion, self.prices.cost(model, completion.prompt_tokens, completion.completion_tokens, batch))
        try:
            plan, critical = _check(completion, job.request)
        except AnswerError as problem:
            if not budget.try_reserve(job.repair_reserve):
                outcome.over_budget = True
                return outcome
            try:
                answer = completion.text or completion.refusal or ""
                repaired = self.client.complete(repair_messages(job.request, answer, str(problem)), job.max_tokens)
            except (RequestError, APIStopError) as e:
                budget.settle(job.repair_reserve, 0.0)
                outcome.error = f"invalid answer ({problem}); the repair request failed: {e}"
                outcome.stop = str(e) if isinstance(e, APIStopError) else None
                return outcome
            repair_cost = self.prices.cost(model, repaired.prompt_tokens, repaired.completion_tokens)
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

    def _entry(self, job: Job, outcome: Outcome, status: str, plan: str = "", critical: Sequence[CriticalStep] = (), error: str | None = None) -> dict[str, Any]:
        return {
            "key": job.key,
            "id": job.trajectory.id,
            "model": self.config.model,
            "prompt_version": PROMPT_VERSION,
            "ratio": self.config.ratio,
            "status": status,
            "plan": plan,
            "critical": [{"step": c.step, "category": c.category, "reason": c.reason} for c in critical],
            "error": error,
            "usage": _usage(outcome.calls, outcome.prompt_tokens, outcome.completion_tokens, outcome.cost + outcome.repair_cost, cached=False),
        }

    def merge(self, run: LabelRun, outcome: Outcome) -> None:
        """Main thread only: fold one outcome into the run's totals and results."""
        run.calls += outcome.calls
        run.prompt_tokens += outcome.prompt_tokens
        run.completion_tokens += outcome.completion_tokens
        run.cost_usd += outcome.cost + outcome.repair_cost
        tid = outcome.job.trajectory.id
        if outcome.entry is not None:
            self._record(run, outcome.job, outcome.entry, cached=False)
        elif outcome.stop is not None or outcome.over_budget:
            run.unlabeled.append(tid)
            if outcome.stop is not None:
                run.stopped, run.fatal = outcome.stop, True
            elif run.stopped is None:
                run.stopped = "budget reached before a repair request"
        else:
            run.failed[tid] = outcome.error or "unknown error"
            run.usage[tid] = _usage(outcome.calls, outcome.prompt_tokens, outcome.completion_tokens, outcome.cost + outcome.repair_cost, cached=False)

    @staticmethod
    def _record(run: LabelRun, job: Job, entry: dict[str, Any], cached: bool) -> None:
        t = job.trajectory
        usage = {**entry.get("usage", {}), "cached": cached}
        run.usage[t.id] = usage
        if entry.get("status") == "ok":
            critical = [CriticalStep(c["step"], c["category"], c.get("reason", "")) for c in entry["critical"]]
            run.labels[t.id] = TrajectoryLabels(t.id, t.n_steps, critical, plan=entry.get("plan", ""), extra={"usage": usage})
        else:
            run.failed[t.id] = str(entry.get("error"))


def _check(completion: Completion, request: Request) -> tuple[str, list[CriticalStep]]:
    if completion.refusal:
        raise AnswerError(f"the model refused: {completion.refusal}")
    try:
        value = parse_answer(completion.text)
    except AnswerError as e:
        if completion.finish_reason == "length":
            raise AnswerError(f"{e} (the answer was cut off at max_tokens)") from None
        raise
    return validate_answer(value, request.n_steps, request.cap)


def _usage(calls: int, prompt: int, completion: int, cost: float, cached: bool) -> dict[str, Any]:
    return {"calls": calls, "prompt_tokens": prompt, "completion_tokens": completion, "cost_usd": round(cost, 6), "cached": cached}

