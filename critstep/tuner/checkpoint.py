"""Resumable checkpoints: accelerate's state saving, a fingerprint of the run, and the resume check.

`accelerator.save_state` writes what every process needs to continue exactly: the optimizer (its
shards under FSDP), the scheduler, and each process's RNG state (`random_states_{rank}.pkl`, read
back by accelerate with `weights_only`). Two hooks narrow the model part to the trainable weights
(the LoRA adapter; every weight in full mode), so a QLoRA checkpoint of an 8B model holds megabytes,
not the 4-bit base. The directory is written under a temporary name and swapped in whole.

Next to it, `state.json` records the step, the eval loss before training, and a fingerprint of the
run: the resolved config (less the keys that only say how often to log, evaluate or save), a hash
of the tokenized training and eval windows, and the number of processes. A resume whose fingerprint
differs is refused with one line naming what changed (`force=True`, `--force-resume`, overrides).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from critstep.errors import ConfigError, InputError
from critstep.io import write_json
from critstep.tuner.config import TuneConfig
from critstep.tuner.windows import Window

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
FORMAT = 2  # 1: critstep <= 0.1's single-process trainable.safetensors + optimizer.pt layout
# Keys that change how often the run reports, not what it trains.
_NOT_FINGERPRINTED = frozenset({"eval_every", "save_every", "log_every"})


def data_hash(train: Sequence[Window], held_out: Sequence[Window]) -> str:
    """sha256 of the token ids and labels of every window, train then eval, in order."""
    digest = hashlib.sha256()
    for part in (train, held_out):
        for w in part:
            digest.update(array("q", w.input_ids).tobytes())
            digest.update(b"|")
            digest.update(array("q", w.labels).tobytes())
            digest.update(b";")
        digest.update(b"#")
    return digest.hexdigest()


def fingerprint(config: TuneConfig, data: str, processes: int) -> dict[str, Any]:
    values = {k: v for k, v in config.to_dict().items() if k not in _NOT_FINGERPRINTED}
    return {
        "config": values,
        "config_hash": hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest(),
        "data_hash": data,
        "processes": processes,
    }


def mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """What differs between the checkpoint's run and this one, in a few words; None if nothing."""
    problems = []
    if saved.get("config_hash") != current["config_hash"]:
        old, new = saved.get("config", {}), current["config"]
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        problems.append("config differs in " + ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in keys[:4])
                        + (f" and {len(keys) - 4} more" if len(keys) > 4 else ""))
    if saved.get("data_hash") != current["data_hash"]:
        problems.append("the data differs (training or held-out selection, tokenizer or chat template)")
    if saved.get("processes") != current["processes"]:
        problems.append(f"it ran on {saved.get('processes')} processes, this run on {current['processes']}")
    return "; ".join(problems) or None


def read_state(path: Path) -> dict[str, Any] | None:
    """The checkpoint's `state.json`, or None when there is no checkpoint."""
    old = path.with_name(path.name + ".old")
    if not path.exists() and (old / STATE_FILE).exists():  # stopped between `save`'s two renames: the previous one
        with contextlib.suppress(FileNotFoundError):  # another process of this run moved it back first
            os.replace(old, path)
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InputError(f"unreadable checkpoint state ({e}); pass --no-resume to start afresh", path / STATE_FILE) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError("checkpoint written by an older critstep (no run fingerprint): pass --no-resume to start afresh", path)
    return state


def check_resume(path: Path, state: dict[str, Any], current: dict[str, Any], force: bool) -> None:
    problem = mismatch(state, current)
    if problem is None:
        return
    if not force:
        raise ConfigError(f"{path}: not resuming a different run: {problem}; "
                          "pass --force-resume to continue it anyway, or --no-resume to start afresh")
    log.warning("resuming %s although %s (--force-resume)", path, problem)


def register_hooks(accelerator: Any) -> None:
    """Make accelerate's save_state/load_state keep and restore only the trainable weights."""
    accelerator.register_save_state_pre_hook(_keep_trainable)
    accelerator.register_load_state_pre_hook(_load_trainable)


def _trainable_names(model: Any) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _keep_trainable(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
    # FSDP saves its shards itself and leaves `weights` empty; otherwise one state dict per model.
    for model, state in zip(models, weights, strict=False):
        keep = _trainable_names(model)
        for key in [k for k in state if k not in keep]:
            del state[key]


def _load_trainable(models: list[Any], input_dir: str) -> None:
    """Load the trainable weights ourselves (accelerate would load strictly, missing the frozen base)."""
    from safetensors.torch import load_file

    for i, model in enumerate(list(models)):
        file = Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
        weights = load_file(str(file), device=str(next(model.parameters()).device))
        missing = sorted(_trainable_names(model) - set(weights))
        if missing:
            raise InputError(f"checkpoint does not match the model: {len(missing)} trainable tensors missing, e.g. {missing[0]}",
                             input_dir)
        model.load_state_dict(weights, strict=False)
        models.remove(model)


def save(path: Path, accelerator: Any, state: dict[str, Any]) -> None:
    """Every process saves its part into `path`.partial; the main process swaps it in whole."""
    partial = path.with_name(path.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(partial / STATE_FILE, {"format": FORMAT, **state})
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)  # left by a run stopped while deleting it: os.replace cannot overwrite it
        if path.exists():
            os.replace(path, old)
        os.replace(partial, path)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load(path: Path, accelerator: Any) -> None:
    accelerator.load_state(str(path))
