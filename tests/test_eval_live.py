"""Live episodes: the agent loop on a scripted environment (no Java), then ScienceWorld itself:
a scripted agent on ScienceWorld's gold path scores 100, invalid actions are counted and fed back,
the step limit holds, and `critstep eval --env scienceworld` writes its contract."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures.eval_support import ScriptedAgent, shared_talkative_llama

from critstep.cli import cli
from critstep.evaluation.envs.base import EnvAdapter, EpisodeSpec, StepResult
from critstep.evaluation.live import run_episode, run_live, summarize_live


class CountdownEnv(EnvAdapter):
    """Accepts `count N` only for the next N of a countdown; done with score 100 at 0, -100 on `quit`."""

    name = "countdown"
    trajectory_env = "sciworld"
    system_prompt = "Count down."

    def __init__(self, start: int = 3):
        self.start = start

    def suite(self, tasks=None, episodes_per_task=None):
        return [EpisodeSpec("countdown", v) for v in range(episodes_per_task or 2)]

    def reset(self, episode):
        self.left = self.start
        return f"Count down from {self.start}."

    def step(self, action):
        if action == "quit":
            return StepResult("You gave up.", -100.0, True, True)
        if action != f"count {self.left - 1}":
            return StepResult("No known action matches that input.", self.score(), False, False)
        self.left -= 1
        return StepResult(f"{self.left} left.", self.score(), self.left == 0, True)

    def score(self):
        return 100.0 * (self.start - self.left) / self.start

    def valid_actions(self):
        return [f"count {self.left - 1}", "quit"]

    def observation_message(self, result):
        return f"{result.observation}\n(score: {result.score / 100})"

    def close(self):
        pass


def test_invalid_actions_are_counted_and_fed_back():
    agent = ScriptedAgent(["count 2", "Think: what next?\ncount 7", "", "count 1", "count 0"])
    episode = run_episode(CountdownEnv(), agent, EpisodeSpec("countdown", 0), max_steps=10)
    assert (episode.score, episode.success, episode.steps, episode.invalid_actions, episode.end) == (100.0, True, 5, 2, "done")
    assert [t["action"] for t in episode.transcript] == ["count 2", "count 7", "", "count 1", "count 0"]  # the command line is sent
    # the conversation the agent saw: system prompt, task, then its replies and the observations, rejections included
    last = agent.seen[-1]
    assert [m["role"] for m in last] == ["system", "user"] + ["assistant", "user"] * 4
    assert last[1]["content"] == "Count down from 3."
    assert last[3]["content"] == f"2 left.\n(score: {100 / 3 / 100})"
    assert last[5]["content"].startswith("No known action matches that input.")
    assert last[4]["content"] == "Think: what next?\ncount 7"  # the agent's own words stay in its history


def test_step_limit_and_failed_tasks():
    limited = run_episode(CountdownEnv(5), ScriptedAgent(["count 4"] + ["look"] * 20), EpisodeSpec("countdown", 0), max_steps=3)
    assert (limited.steps, limited.end, limited.success, limited.invalid_actions) == (3, "step_limit", False, 2)
    assert limited.score == pytest.approx(20.0)
    failed = run_episode(CountdownEnv(), ScriptedAgent(["quit"]), EpisodeSpec("countdown", 0), max_steps=3)
    assert (failed.score, failed.raw_score, failed.success, failed.end) == (0.0, -100.0, False, "done")


def test_episodes_and_means():
    agent = ScriptedAgent(["count 2", "count 1", "count 0", "look", "look"])
    episodes = run_live(CountdownEnv(), agent, CountdownEnv().suite(), max_steps=2, progress=False)
    assert agent.resets == 2
    summary = summarize_live(episodes)
    assert summary["mean"]["episodes"] == 2 and summary["mean"]["steps"] == 2.0 and summary["mean"]["invalid_actions"] == 1.0
    assert summary["mean"]["score"] == pytest.approx((66.66666666666667 + 0.0) / 2)
    assert summary["per_task"]["countdown"]["success"] == 0.0


needs_scienceworld = pytest.mark.skipif(
    importlib.util.find_spec("scienceworld") is None or shutil.which("java") is None,
    reason="ScienceWorld needs `pip install scienceworld` and a Java runtime (make install sets both up)",
)


@pytest.fixture(scope="module")
def scienceworld():
    from critstep.evaluation.envs import build_env

    env = build_env("scienceworld")
    yield env
    env.close()


@needs_scienceworld
def test_scienceworld_gold_path_scores_100(scienceworld):
    episode_spec = scienceworld.suite(["lifespan-longest-lived"], 1)[0]
    assert episode_spec == EpisodeSpec("lifespan-longest-lived", 103)
    gold = scienceworld.gold_actions(episode_spec)
    assert 2 <= len(gold) <= 8
    agent = ScriptedAgent(["look around", "fly to the moon", *gold])  # a look, an invalid action, then the gold path
    episode = run_episode(scienceworld, agent, episode_spec, max_steps=30)
    assert (episode.score, episode.success, episode.end, episode.invalid_actions) == (100.0, True, "done", 1)
    script = ["look around", "fly to the moon", *gold]
    assert [t["action"] for t in episode.transcript] == script[: episode.steps]  # the task may end before a trailing "wait"
    assert episode.steps >= len(script) - 1
    first = agent.seen[0]
    assert first[0]["content"].startswith("You are an agent in ScienceWorld")  # the corpus's system prompt
    assert first[1]["content"].startswith("Your task is to find the animal with the longest life span")
    seen = agent.seen[-1]
    assert seen[3]["content"].startswith("This room is called") and seen[3]["content"].endswith("(score: 0.0)")
    assert seen[5]["content"] == "No known action matches that input.\n(score: 0.0)"


@needs_scienceworld
def test_scienceworld_valid_actions_and_step_limit(scienceworld):
    episode_spec = EpisodeSpec("find-non-living-thing", 235)
    scienceworld.reset(episode_spec)
    valid = scienceworld.valid_actions()
    assert "look around" in valid and any(a.startswith("focus on") for a in valid)
    assert scienceworld.step("look around").valid and not scienceworld.step("dance wildly").valid
    episode = run_episode(scienceworld, ScriptedAgent(["look around"] * 5), episode_spec, max_steps=2)
    assert (episode.steps, episode.end, episode.success) == (2, "step_limit", False)


@needs_scienceworld
def test_live_cli_writes_the_contract(tmp_path, tmp_path_factory):
    tiny = shared_talkative_llama(tmp_path_factory)
    out = tmp_path / "live"
    result = CliRunner().invoke(cli, ["eval", "--env", "scienceworld", "--model", str(tiny), "--out", str(out), "--tasks", "lifespan-longest-lived",
                                      "--episodes", "1", "--max-steps", "2", "--max-new-tokens", "4", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    episode = report["episodes"][0]
    assert {k: episode[k] for k in ("task", "variation", "steps")} == {"task": "lifespan-longest-lived", "variation": 103, "steps": 2}
    assert set(report["mean"]) >= {"score", "success", "steps", "invalid_actions"}
    assert episode["invalid_actions"] == 2  # random tokens are no ScienceWorld command
    transcript = json.loads((out / "episodes.jsonl").read_text().splitlines()[0])["transcript"]
    assert len(transcript) == 2 and transcript[0]["observation"] == "No known action matches that input."
    bad = CliRunner().invoke(cli, ["eval", "--env", "scienceworld", "--model", str(tiny), "--out", str(tmp_path / "x"), "--tasks", "juggle"])
    assert bad.exit_code == 1 and "unknown ScienceWorld task" in bad.output


@pytest.mark.slow
@needs_scienceworld
def test_smollm2_plays_a_few_scienceworld_episodes(tmp_path):
    """The built-in SmolLM2-135M (untuned) as the agent for 2 episodes of the suite, end to end."""
    out = tmp_path / "live"
    result = CliRunner().invoke(cli, ["eval", "--env", "scienceworld", "--model", "smollm2-135m", "--out", str(out),
                                      "--tasks", "lifespan-longest-lived,find-non-living-thing", "--episodes", "1", "--max-steps", "8", "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert len(report["episodes"]) == 2 and all(1 <= e["steps"] <= 8 for e in report["episodes"])
    assert all(0 <= e["score"] <= 100 for e in report["episodes"])
    assert Path(out / "eval.md").read_text().startswith("# Live evaluation in scienceworld")


class CrashingCountdownEnv(CountdownEnv):
    """A countdown whose simulator dies when the second episode starts (a JVM crash, say)."""

    def reset(self, episode):
        if episode.variation == 1:
            raise RuntimeError("simulator died")
        return super().reset(episode)


def test_live_cli_keeps_the_finished_episodes_when_the_run_dies(tmp_path, tmp_path_factory, monkeypatch):
    import critstep.evaluation.envs as envs

    tiny = shared_talkative_llama(tmp_path_factory)
    monkeypatch.setattr(envs, "build_env", lambda name: CrashingCountdownEnv())
    out = tmp_path / "live"
    result = CliRunner().invoke(cli, ["eval", "--env", "scienceworld", "--model", str(tiny), "--out", str(out), "--max-steps", "2",
                                      "--max-new-tokens", "4", "--quiet"])
    assert isinstance(result.exception, RuntimeError)
    rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [(r["task"], r["variation"], r["steps"]) for r in rows] == [("countdown", 0, 2)]
