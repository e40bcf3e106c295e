"""The training-state file: what ``finetune --resume`` continues from.

It is prunekit's container (:mod:`prunekit.container`), like a checkpoint, digest included: the
model, the EMA and the optimiser's tensors, and as metadata the configuration the run was
started with, the step, the EMA's update count, the optimiser's other state and the
checkpoint's arch and input. A file with a changed bit, truncated, or started with other
settings is refused in one line, and nothing is loaded from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit import container
from prunekit.errors import PrunekitError
from prunekit.files import write_atomic


def save(path: Path, config: dict[str, Any], step: int, model: nn.Module, ema: nn.Module,
         ema_updates: int, optimizer: torch.optim.Optimizer, checkpoint: dict[str, Any]) -> None:
    """Write the training state after ``step`` steps (atomically).

    Args:
        path: the state file.
        config: the run's recorded configuration (what a resumed run must match).
        step: steps done.
        model: the model being trained.
        ema: the EMA model.
        ema_updates: the EMA's update count.
        optimizer: the optimiser.
        checkpoint: the starting checkpoint's ``arch`` and ``input`` (for the record).
    """
    tensors: dict[str, Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous().clone()
    for k, v in ema.state_dict().items():
        tensors[f"ema.{k}"] = v.detach().cpu().contiguous().clone()
    opt = optimizer.state_dict()
    opt_meta: dict[str, Any] = {"param_groups": opt["param_groups"], "state": {}}
    for pid, st in opt["state"].items():
        opt_meta["state"][str(pid)] = {}
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{key}"] = val.detach().cpu().contiguous().clone()
                opt_meta["state"][str(pid)][key] = "tensor"
            else:
                opt_meta["state"][str(pid)][key] = val
    meta = {"config": json.dumps(config, sort_keys=True), "step": str(step),
            "ema_updates": str(ema_updates), "optim": json.dumps(opt_meta),
            "checkpoint": json.dumps(checkpoint)}
    write_atomic(path, container.to_bytes(tensors, meta))


def load(path: Path, differences, model: nn.Module, ema: nn.Module,
         optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """Restore the training state from ``path`` into the model, the EMA model and the
    optimiser.

    Args:
        path: the state file.
        differences: ``differences(recorded config) -> [setting names]``: the settings in
            which this run differs from the one that wrote the file (refused).
        model: the model being trained.
        ema: the EMA model.
        optimizer: the optimiser.

    Returns:
        The steps done and the EMA's update count.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PrunekitError(f"--resume: no training state at {path}; run without --resume to "
                            f"start") from None
    except OSError as e:
        raise PrunekitError(f"--resume: cannot read {path}: {e.strerror or e}") from None
    try:
        tensors, meta = container.from_bytes(data, str(path))
        saved = json.loads(meta["config"])
        step, updates = int(meta["step"]), int(meta["ema_updates"])
        opt_meta = json.loads(meta["optim"])
    except container.ContainerError as e:
        raise PrunekitError(f"--resume: the training state {e.problem}; delete it and run "
                            f"without --resume to start again") from None
    except (KeyError, TypeError, ValueError) as e:
        raise PrunekitError(f"--resume: the training state {path} is not one finetune wrote "
                            f"({type(e).__name__}: {container.one_line(e)}); delete it and run "
                            f"without --resume to start again") from None
    diff = differences(saved)
    if diff:
        raise PrunekitError(f"--resume: {path} was started with other settings ({diff[0]}); "
                            f"use the same arguments, or delete the state file to start again")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state = {}
    for pid, st in opt_meta["state"].items():
        state[int(pid)] = {key: tensors[f"optim.{pid}.{key}"] if val == "tensor" else val
                           for key, val in st.items()}
    optimizer.load_state_dict({"param_groups": opt_meta["param_groups"], "state": state})
    return step, updates
