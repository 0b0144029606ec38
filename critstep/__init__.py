"""critstep: select the critical steps of agent trajectories and finetune on them, locally."""

__version__ = "0.1.0"
