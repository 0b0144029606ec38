"""`--batch`: the OpenAI Batch API (half price, answers within 24 h).

Flow: write the request JSONL, upload it (files API), submit it (batches API), and record the
batch id in a state file at once, so an interrupted run resumes polling the same batch instead
of paying for a second one. When the batch ends, its output is downloaded and every answer goes
through the same validation as a synchronous one; an invalid answer gets its one repair request
synchronously (standard price), and everything lands in the cache.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from critstep.errors import CritstepError
from critstep.io import atomic_write, write_json
from critstep.selector.oracle.client import ChatClient, RequestError, completion_from, server_detail

if TYPE_CHECKING:
    from critstep.selector.oracle.labeler import Budget, Job, OracleLabeler
    from critstep.selector.oracle.results import LabelRun

log = logging.getLogger("critstep.oracle")
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")


def default_state_path(out: str | Path) -> Path:
    """Where `--batch` records its batch id: beside the labels file."""
    out = Path(out)
    return out.with_name(out.name + ".batch.json")


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def run_batch(labeler: OracleLabeler, todo: list[Job], run: LabelRun, budget: Budget, max_calls: int | None) -> None:
    from critstep.selector.oracle.labeler import Outcome

    config = labeler.config
    if config.batch_state_path is None:
        raise CritstepError("batch mode needs a state file (OracleConfig.batch_state_path, or --out for the CLI)")
    state_path = Path(config.batch_state_path)
    client = labeler.client
    jobs = {job.key: job for job in todo}
    answered: set[str] = set()

    def collect(state: dict[str, Any]) -> None:
        try:
            results = _wait(client, state, config.poll_interval)
        except CritstepError:
            if state.get("status") == "failed":  # nothing to resume: the next run submits afresh
                state_path.unlink(missing_ok=True)
            raise
        for key, result in results.items():
            job = jobs.get(key)
            if job is None:
                log.warning("batch %s: an answer for a trajectory not in this input was paid for but not used", state["batch_id"])
                continue
            answered.add(key)
            outcome = Outcome(job)
            if isinstance(result, str):
                outcome.error = result
            else:
                outcome = labeler.finish(job, completion_from(result, job.request.messages), outcome, budget, batch=True)
            reserved = job.reserve if key in state.get("reserved", ()) else 0.0
            budget.settle(reserved, outcome.cost)
            labeler.merge(run, outcome)
        missing = [k for k in state["keys"] if k in jobs and k not in answered]
        if missing and run.stopped is None:
            run.stopped = f"batch {state['batch_id']} ended {state['status']} with {len(missing)} requests unanswered; re-run to resubmit them"
        state_path.unlink(missing_ok=True)

    if state_path.exists():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            state["batch_id"], state["keys"]  # noqa: B018 (both must be there)
        except (ValueError, KeyError, TypeError):
            raise CritstepError(f"{state_path}: unreadable batch state; delete it to submit a new batch (check the Batch API dashboard first)") from None
        log.info("resuming batch %s recorded in %s", state["batch_id"], state_path)
        collect(state)

    remaining = [job for job in todo if job.key not in answered]
    if run.stopped is None and remaining:
        chosen: list[Job] = []
        for job in remaining:
            if max_calls is not None and len(chosen) >= max_calls:
                run.stopped = f"call limit of {max_calls} trajectories reached"
                break
            if not budget.try_reserve(job.reserve):
                run.stopped = f"budget of ${budget.limit:,.2f} reached: {len(chosen)} of {len(remaining)} requests fit"
                break
            chosen.append(job)
        if chosen:
            collect(_submit(client, chosen, state_path))
    run.unlabeled.extend(job.trajectory.id for job in todo if job.key not in answered)


def _submit(client: ChatClient, jobs: list[Job], state_path: Path) -> dict[str, Any]:
    requests_path = state_path.with_name(state_path.name.removesuffix(".json") + ".requests.jsonl")
    with atomic_write(requests_path) as f:
        for job in jobs:
            r = job.request
            body = client.body(r.n_steps, r.cap, r.messages, job.max_tokens, mode="json_schema")
            f.write(json.dumps({"custom_id": job.key, "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False) + "\n")
    no_api = f"{client.endpoint} has no OpenAI Files/Batch API"
    try:
        uploaded = client.retrying(lambda: client.client.files.create(file=(requests_path.name, requests_path.read_bytes()), purpose="batch"))
        if not isinstance(getattr(uploaded, "id", None), str):
            raise CritstepError(f"{no_api} (POST /files did not return a file object): --batch works with OpenAI's API; drop --batch")
        batch = client.retrying(lambda: client.client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h"))
        if not isinstance(getattr(batch, "id", None), str):
            raise CritstepError(f"{no_api} (POST /batches did not return a batch object): --batch works with OpenAI's API; drop --batch")
    except client._openai.APIStatusError as e:
        if e.status_code in (404, 405, 501):
            raise CritstepError(client.redact(f"{no_api} (HTTP {e.status_code}: {server_detail(e)}): --batch works with OpenAI's API; drop --batch")) from None
        raise CritstepError(client.redact(f"could not submit the batch: HTTP {e.status_code}: {server_detail(e)}")) from None
    except RequestError as e:
        raise CritstepError(client.redact(f"could not submit the batch to {client.endpoint}: {e}")) from None
    keys = [job.key for job in jobs]
    state = {"batch_id": batch.id, "input_file_id": uploaded.id, "model": client.model, "submitted_at": int(time.time()), "keys": keys, "reserved": keys}
    write_json(state_path, state)
    log.info("submitted batch %s (%d requests); its id is in %s, so an interrupted run resumes it", batch.id, len(jobs), state_path)
    return state


def _wait(client: ChatClient, state: dict[str, Any], poll_interval: float) -> dict[str, dict[str, Any] | str]:
    """Poll until the batch ends; its answers (response bodies) or error texts by custom_id."""
    batch_id = state["batch_id"]
    try:
        while True:
            batch = client.retrying(lambda: client.client.batches.retrieve(batch_id))
            counts = batch.request_counts
            done = f"{counts.completed + counts.failed}/{counts.total}" if counts else "?"
            log.info("batch %s: %s (%s requests done)", batch_id, batch.status, done)
            if batch.status in TERMINAL:
                break
            _sleep(poll_interval)
        state["status"] = batch.status
        if batch.status == "failed":
            errors = "; ".join(e.message or "" for e in (batch.errors.data or [])) if batch.errors else ""
            raise CritstepError(client.redact(f"batch {batch_id} failed: {errors or 'no reason given'}"))
        results: dict[str, dict[str, Any] | str] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                text = client.retrying(lambda fid=file_id: client.client.files.content(fid)).text
                results.update(_parse_results(text, client))
        return results
    except client._openai.APIStatusError as e:
        raise CritstepError(client.redact(f"batch {batch_id}: HTTP {e.status_code}: {server_detail(e)}")) from None
    except RequestError as e:
        raise CritstepError(client.redact(f"batch {batch_id}: {e}; run again to resume polling it")) from None


def _parse_results(text: str, client: ChatClient) -> dict[str, dict[str, Any] | str]:
    out: dict[str, dict[str, Any] | str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        response = row.get("response") or {}
        if row.get("error") or response.get("status_code") != 200:
            error = row.get("error") or (response.get("body") or {}).get("error") or {}
            out[row["custom_id"]] = client.redact(f"batch request failed: HTTP {response.get('status_code')}: {error.get('message', error)}")
        else:
            out[row["custom_id"]] = response["body"]
    return out
