"""`critstep eval`: run a (tuned) model as an agent, offline on held-out trajectories or live in an environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from critstep.commands._options import FORMAT_OPTION, input_argument, limit_option
from critstep.errors import ConfigError
from critstep.evaluation.envs import ENVS

OFFLINE_NEW_TOKENS = 128  # covers 99% of the corpus's agent turns (tau-bench's longest replies excepted)
LIVE_NEW_TOKENS = 64  # one command per turn


@click.command("eval")
@input_argument("trajectories", required=False)
@click.option("--model", required=True, help="Base model (built-in name, hub id or directory; a merged model is just its directory), or the model name at --base-url.")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False, path_type=Path), help="LoRA adapter to apply (a `critstep tune` output).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory for eval.json, eval.md and the per-step or per-episode records.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Teacher labels: figures on their critical steps too.")
@limit_option("trajectories")
@click.option("--steps-per-trajectory", type=click.IntRange(1), help="At most N steps of each trajectory, spread from first to last (long runs otherwise dominate).")
@click.option("--env", "env_name", type=click.Choice(list(ENVS)), help="Run live episodes in this environment instead of reading trajectories.")
@click.option("--tasks", help="Live: comma-separated tasks (default: the environment's fixed suite).")
@click.option("--episodes", type=click.IntRange(1), help="Live: episodes (variations) per task. [default: 2]")
@click.option("--max-steps", type=click.IntRange(1), default=30, show_default=True, help="Live: step limit per episode.")
@click.option("--base-url", help="Generate through this OpenAI-compatible server (vLLM, llama.cpp, ...) instead of locally; key from OPENAI_API_KEY.")
@click.option("--concurrency", type=click.IntRange(1), default=8, show_default=True, help="--base-url: requests in flight.")
@click.option("--max-new-tokens", type=click.IntRange(1), help=f"Longest generated turn. [default: {OFFLINE_NEW_TOKENS} offline, {LIVE_NEW_TOKENS} live]")
@click.option("--max-len", type=click.IntRange(32), help="Longest context in tokens. [default: the adapter's tuning max_seq_len, else 1024]")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True, help="Steps generated together.")
@click.option("--device", help="cpu or cuda (default: cuda when present).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True,
              help="auto: float32 on CPU, bfloat16 on GPUs that support it.")
@click.option("--load-4bit", is_flag=True, help="Load the base in 4-bit NF4 (as QLoRA trained it; the adapter is then not merged).")
@click.option("--chat-template", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Jinja chat template replacing the tokenizer's.")
@click.option("--trust-remote-code", is_flag=True, help="Run the model repository's own code (off unless asked).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap intervals.")
@FORMAT_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(
    trajectories: str | None,
    model: str,
    adapter: Path | None,
    out: Path,
    labels: Path | None,
    limit: int | None,
    steps_per_trajectory: int | None,
    env_name: str | None,
    tasks: str | None,
    episodes: int | None,
    max_steps: int,
    base_url: str | None,
    concurrency: int,
    max_new_tokens: int | None,
    max_len: int | None,
    batch_size: int,
    device: str | None,
    dtype: str,
    load_4bit: bool,
    chat_template: Path | None,
    trust_remote_code: bool,
    seed: int,
    fmt: str | None,
    quiet: bool,
) -> None:
    """Evaluate MODEL (with --adapter) as an agent.

    Offline, on TRAJECTORIES: every step is generated greedily from its gold prefix and scored
    against the gold turn (action match, exact and normalized per env; the gold turn's NLL),
    per env and overall, with bootstrap 95% intervals over trajectories.

    Live, with --env: episodes of the environment's fixed suite, the model acting until the task
    ends or --max-steps; score, success, steps and invalid actions per episode and their means.

    \b
    critstep eval test.jsonl --model smollm2-135m --adapter runs/smol --labels labels.jsonl --out runs/eval
    critstep eval --env scienceworld --model smollm2-135m --adapter runs/smol --out runs/eval-sw --episodes 1
    critstep eval test.jsonl --model Qwen/Qwen2.5-7B-Instruct --base-url http://localhost:8000/v1 --out runs/eval-vllm
    """
    from critstep.io import check_outputs_apart, claim_output_dir
    from critstep.streams import expand_source

    if env_name is None and trajectories is None:
        raise click.UsageError("give TRAJECTORIES to evaluate offline, or --env NAME to run live episodes")
    if env_name is not None and (trajectories is not None or labels is not None or limit is not None or steps_per_trajectory is not None):
        raise ConfigError("--env runs live episodes: TRAJECTORIES, --labels, --limit and --steps-per-trajectory belong to offline evaluation")
    if env_name is None and (tasks is not None or episodes is not None):
        raise ConfigError("--tasks and --episodes belong to live evaluation (--env)")
    if base_url is not None and (adapter is not None or load_4bit or chat_template is not None):
        raise ConfigError("with --base-url the server runs the model: serve the adapter there (e.g. vLLM --lora-modules) and name it with --model")
    new_tokens = max_new_tokens or (LIVE_NEW_TOKENS if env_name else OFFLINE_NEW_TOKENS)
    check_outputs_apart({"TRAJECTORIES": expand_source(trajectories) if trajectories is not None else None, "--labels": labels,
                         "--adapter": adapter, "--chat-template": chat_template}, {}, {"--out": out})
    # offline and live runs write different files: separate kinds, so neither leaves its files beside the other's report
    out = claim_output_dir(out, "eval-live" if env_name else "eval-offline")  # before the slow work, not after
    data = _read_offline(trajectories, labels, limit, fmt) if trajectories is not None else None  # bad input fails before the model loads
    agent, load_s, settings = _agent(model, adapter, base_url, concurrency, new_tokens, max_len, batch_size, device, dtype, load_4bit,
                                     chat_template, trust_remote_code)
    meta: dict[str, Any] = {"model": _display(model), "adapter": _display(adapter), "backend": "openai-compatible" if base_url else "local",
                            "settings": settings, "load_seconds": round(load_s, 2), "seed": seed}
    if data is None:
        assert env_name is not None
        _live(env_name, agent, tasks, episodes, max_steps, out, meta, seed, quiet)
    else:
        meta |= {"trajectories": _display(trajectories), "labels": _display(labels), "steps_per_trajectory": steps_per_trajectory}
        _offline(*data, agent, out, meta, seed, quiet, steps_per_trajectory)


def _display(ref: Any) -> str | None:
    from critstep.evaluation.report import display_ref

    return display_ref(ref)


def _agent(model: str, adapter: Path | None, base_url: str | None, concurrency: int, new_tokens: int, max_len: int | None, batch_size: int,
           device: str | None, dtype: str, load_4bit: bool, chat_template: Path | None, trust_remote_code: bool) -> tuple[Any, float, dict[str, Any]]:
    import time

    started = time.perf_counter()
    if base_url is not None:
        from critstep.evaluation.remote import RemoteModel

        agent: Any = RemoteModel(model, base_url, new_tokens, concurrency)
        return agent, time.perf_counter() - started, {"max_new_tokens": new_tokens, "concurrency": concurrency}
    from critstep.evaluation.local import LocalModel

    max_len = max_len or _tuned_max_len(adapter) or 1024
    agent = LocalModel.load(model, adapter, device, dtype, load_4bit, chat_template, trust_remote_code,
                            max_len=max_len, max_new_tokens=new_tokens, batch_size=batch_size)
    settings = {"max_len": max_len, "max_new_tokens": new_tokens, "batch_size": batch_size, "device": str(agent.device),
                "dtype": str(next(agent.model.parameters()).dtype).removeprefix("torch."), "load_4bit": load_4bit,
                "chat_template": chat_template.name if chat_template else None}
    return agent, time.perf_counter() - started, settings


def _tuned_max_len(adapter: Path | None) -> int | None:
    """The window length the adapter was tuned with (critstep tune writes it beside the adapter)."""
    if adapter is None:
        return None
    import yaml

    from critstep.tuner.train import CONFIG_FILE

    try:
        value = (yaml.safe_load((adapter / CONFIG_FILE).read_text(encoding="utf-8")) or {}).get("max_seq_len")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


def _read_offline(trajectories: str, labels: Path | None, limit: int | None, fmt: str | None) -> tuple[list[Any], dict[str, Any] | None]:
    """The trajectories to evaluate and, if given, the labels of those among them.

    A label file may cover more trajectories than are evaluated (the whole seed set, say); the
    labels of evaluated ones must agree with them on the number of steps.
    """
    from critstep.errors import InputError
    from critstep.formats import read_trajectories
    from critstep.labels import read_labels

    chosen = read_trajectories(trajectories, fmt, limit=limit)
    if not any(t.n_steps for t in chosen):
        raise InputError(f"none of the {len(chosen)} trajectories has an agent step to evaluate", trajectories)
    if labels is None:
        return chosen, None
    by_id = {t.id: t for t in chosen}
    gold = {i: lab for i, lab in read_labels(labels).items() if i in by_id}
    if not gold:  # the figures on critical steps were asked for and would silently be missing
        raise InputError(f"no labeled trajectory is among the {len(chosen)} evaluated ones (labels of other data?)", labels)
    for i, lab in gold.items():
        if lab.n_steps != by_id[i].n_steps:
            raise InputError(f"labels of {i!r} count {lab.n_steps} steps but the trajectory has {by_id[i].n_steps}", labels)
    return chosen, gold


def _offline(chosen: list[Any], gold: dict[str, Any] | None, agent: Any, out: Path, meta: dict[str, Any], seed: int, quiet: bool,
             steps_per_trajectory: int | None) -> None:
    from critstep.evaluation.offline import evaluate_offline, summarize
    from critstep.evaluation.report import write_offline_report
    from critstep.io import write_jsonl

    done: list[Any] = []
    try:
        run = evaluate_offline(chosen, agent, gold, progress=not quiet, steps_per_trajectory=steps_per_trajectory, records=done)
    except BaseException:  # a crash or Ctrl-C midway: the steps already generated (maybe paid for) are kept
        if done:
            write_jsonl(out / "predictions.jsonl", (r.to_dict() for r in done))
            click.echo(f"the {len(done)} steps generated before the run stopped are in {out / 'predictions.jsonl'}", err=True)
        raise
    write_jsonl(out / "predictions.jsonl", (r.to_dict() for r in run.records))
    steps = len(run.records)
    t = agent.timing
    timing = {
        "seconds": round(run.seconds, 2),
        "steps": steps,
        "steps_per_s": steps / run.seconds if run.seconds else None,
        "forward_s": round(t.forward_s, 2),
        "decode_s": round(t.decode_s, 2),
        "generation_share": t.decode_s / run.seconds if run.seconds else None,
        "forward_share": t.forward_s / run.seconds if run.seconds else None,
        "prompt_tokens": t.prompt_tokens,
        "generated_tokens": t.generated_tokens,
        "truncated_steps": t.truncated_steps,
        "generation_errors": t.errors,
    }
    meta |= {"n_trajectories": len(chosen) - len(run.skipped), "skipped_without_steps": len(run.skipped),
             "n_labeled": len(gold) if gold is not None else None}
    summary = summarize(run.records, seed)
    write_offline_report(out, meta, summary, timing)
    for env, f in [("overall", summary["overall"]), *summary["per_env"].items()]:
        line = f"{env:<14} {f['n_steps']:>6} steps  action match {f['action_match']:.3f}  normalized {f['action_match_normalized']:.3f}"
        line += f"  NLL {f['nll']:.3f}" if f["nll"] is not None else ""
        if "critical" in f and f["critical"]["n_steps"]:
            c = f["critical"]
            line += f"  | critical: {c['n_steps']} steps, match {c['action_match']:.3f}, normalized {c['action_match_normalized']:.3f}"
        click.echo(line)
    click.echo(f"{steps} steps in {run.seconds:.1f} s ({timing['steps_per_s'] or 0:.2f} steps/s, generation {timing['generation_share'] or 0:.0%} "
               f"of the time); wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'predictions.jsonl'}")


def _live(env_name: str, agent: Any, tasks: str | None, episodes: int | None, max_steps: int, out: Path, meta: dict[str, Any],
          seed: int, quiet: bool) -> None:
    from critstep.evaluation.envs import build_env
    from critstep.evaluation.live import run_live, summarize_live
    from critstep.evaluation.report import write_live_report
    from critstep.io import write_jsonl

    env = build_env(env_name)
    finished: list[Any] = []
    try:
        specs = env.suite([t.strip() for t in tasks.split(",") if t.strip()] if tasks else None, episodes)
        results = run_live(env, agent, specs, max_steps, progress=not quiet, on_episode=finished.append)
    except BaseException:  # a crash or Ctrl-C mid-suite: the episodes already played are kept
        if finished:
            write_jsonl(out / "episodes.jsonl", ({**e.summary(), "transcript": e.transcript} for e in finished))
            click.echo(f"the {len(finished)} finished episodes are in {out / 'episodes.jsonl'}", err=True)
        raise
    finally:
        env.close()
    write_jsonl(out / "episodes.jsonl", ({**e.summary(), "transcript": e.transcript} for e in results))
    meta |= {"env": env_name, "max_steps": max_steps, "simplification": getattr(env, "simplification", None),
             "generation_seconds": round(agent.timing.decode_s + agent.timing.forward_s, 2)}
    summary = summarize_live(results, seed)
    write_live_report(out, meta, summary, [e.summary() for e in results])
    m = summary["mean"]
    for e in results:
        click.echo(f"{e.task}/{e.variation}: score {e.score:.0f}{' (success)' if e.success else ''}, {e.steps} steps, {e.invalid_actions} invalid, {e.end}")
    click.echo(f"mean over {m['episodes']} episodes: score {m['score']:.1f}, success {m['success']:.0%}, {m['steps']:.1f} steps, "
               f"{m['invalid_actions']:.1f} invalid actions; wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'episodes.jsonl'}")
