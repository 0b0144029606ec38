"""ScienceWorld (Wang et al., 2022) through its PyPI package: the simulator is a Scala jar run by a
local Java runtime, so episodes need no network. `pip install scienceworld` and a JRE
(`apt-get install default-jre-headless`).

The conversation matches the shared corpus's ScienceWorld trajectories (SwiftSage's gold logs):
the same system prompt, the task description as the first user message, the agent's reply as the
action, and each observation followed by `(score: S)` with S on a 0-1 scale. Those logs were
recorded with the `easy` simplifications (doors and containers open, teleport actions available,
self-watering pots, no electrical actions needed); replaying them under `easy` reproduces every
observation, so `easy` is the default here too.

The suite (`SUITE`) is fixed: five short-horizon tasks (gold paths of 2 to 16 actions), each with
variations from ScienceWorld's test split that are in neither the corpus nor heldout.jsonl (the
corpus holds the first ten test variations of every task). Tasks outside it take their test-split
variations after the first ten, or their dev split when the test split has no more.
"""

from __future__ import annotations

from critstep.errors import ConfigError
from critstep.evaluation.envs.base import EnvAdapter, EpisodeSpec, StepResult

SYSTEM_PROMPT = (
    "You are an agent in ScienceWorld, a text-based science lab. Each turn, reply with one action; "
    "the environment replies with an observation and your score."
)
SUITE: dict[str, list[int]] = {
    "lifespan-longest-lived": [103, 104, 105, 106],
    "lifespan-shortest-lived": [103, 104, 105, 106],
    "lifespan-longest-lived-then-shortest-lived": [103, 104, 105, 106],
    "find-non-living-thing": [235, 236, 237, 238],
    "find-plant": [235, 236, 237, 238],
}
DEFAULT_EPISODES_PER_TASK = 2
CORPUS_TEST_VARIATIONS = 10  # the first test variations of each task are the corpus's gold trajectories
UNKNOWN_ACTION = "No known action matches that input."


class ScienceWorldAdapter(EnvAdapter):
    name = "scienceworld"
    trajectory_env = "sciworld"
    system_prompt = SYSTEM_PROMPT

    def __init__(self, simplification: str = "easy"):
        try:
            from scienceworld import ScienceWorldEnv
        except ImportError:
            raise ConfigError("the ScienceWorld environment needs the scienceworld package: pip install scienceworld (and a Java runtime)") from None
        try:
            self.env = ScienceWorldEnv("", envStepLimit=10**6)  # critstep enforces its own step limit
        except (OSError, RuntimeError) as e:
            raise ConfigError(f"cannot start ScienceWorld's simulator (it needs Java: apt-get install default-jre-headless): {e}") from None
        self.simplification = simplification
        self.tasks = list(self.env.get_task_names())

    def suite(self, tasks: list[str] | None = None, episodes_per_task: int | None = None) -> list[EpisodeSpec]:
        names = tasks or list(SUITE)
        unknown = [t for t in names if t not in self.tasks]
        if unknown:
            raise ConfigError(f"unknown ScienceWorld task(s) {', '.join(unknown)} (known: {', '.join(self.tasks)})")
        n = episodes_per_task or DEFAULT_EPISODES_PER_TASK
        return [EpisodeSpec(task, v) for task in names for v in self.variations(task)[:n]]

    def variations(self, task: str) -> list[int]:
        """The suite's variations of `task`, or the rule for tasks outside the suite (see the module doc)."""
        if task in SUITE:
            return SUITE[task]
        self.env.load(task, 0, self.simplification)
        test = list(self.env.get_variations_test())[CORPUS_TEST_VARIATIONS:]
        return test or list(self.env.get_variations_dev())

    def reset(self, episode: EpisodeSpec, gold_path: bool = False) -> str:
        self.env.load(episode.task, episode.variation, self.simplification, generateGoldPath=gold_path)
        self.env.reset()
        return str(self.env.get_task_description())

    def gold_actions(self, episode: EpisodeSpec) -> list[str]:
        """ScienceWorld's own gold action sequence for `episode` (it resets the episode)."""
        self.reset(episode, gold_path=True)
        return list(self.env.get_gold_action_sequence())

    def step(self, action: str) -> StepResult:
        observation, _, done, info = self.env.step(action)
        return StepResult(str(observation), float(info["score"]), bool(done), observation.strip() != UNKNOWN_ACTION)

    def valid_actions(self) -> list[str]:
        return list(self.env.get_valid_action_object_combinations())

    def observation_message(self, result: StepResult) -> str:
        return f"{result.observation}\n(score: {result.score / 100})"

    def close(self) -> None:
        self.env.close()
