"""The tuner: QLoRA (or LoRA, or full) finetuning with the loss on the selected steps only.

    from critstep.tuner import TuneConfig, tune, merge_adapter
    result = tune("selected.jsonl", TuneConfig.from_yaml("configs/tune-smollm2-135m-cpu.yaml"), "runs/smollm2")
    result.eval_loss_before, result.eval_loss_after
    merge_adapter(result.adapter_dir, "runs/smollm2-merged")

Heavy libraries (torch, transformers, peft) are imported inside the functions that need them.
"""

from critstep.tuner.config import TuneConfig
from critstep.tuner.data import DataStats, build_windows, load_selection
from critstep.tuner.loss import supervised_loss
from critstep.tuner.merge import merge_adapter
from critstep.tuner.render import RenderedTrajectory, render_trajectory
from critstep.tuner.train import TuneResult, dump_supervised, evaluate_loss, tune
from critstep.tuner.windows import Window, make_windows

__all__ = [
    "DataStats",
    "RenderedTrajectory",
    "TuneConfig",
    "TuneResult",
    "Window",
    "build_windows",
    "dump_supervised",
    "evaluate_loss",
    "load_selection",
    "make_windows",
    "merge_adapter",
    "render_trajectory",
    "supervised_loss",
    "tune",
]
