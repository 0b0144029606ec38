"""Agent evaluation: run a (tuned) model as the agent and judge what it does.

- offline (`offline.py`): every step of held-out trajectories generated from its gold prefix and
  scored against the gold turn (env-aware action match in `actions.py`, the gold turn's NLL), with
  bootstrap intervals over trajectories (`stats.py`);
- live (`live.py`): episodes in an environment behind an adapter (`envs/`, ScienceWorld first).

The agent is a local transformers model (`local.py`: windows of KV cache, batched greedy decoding
in `decode.py`) or any OpenAI-compatible server (`remote.py`). `critstep eval` is the command.
"""
