"""Several processes training one model (torchrun): each rank's fingerprint, the check that
they all hold the same weights, and the per-step training log that records both."""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor, nn

from prunekit.distributed import Session, checksum
from prunekit.errors import PrunekitError


def fingerprint(model: nn.Module, ema: nn.Module, masks: dict[str, Tensor]) -> list[int]:
    """This rank's fingerprint: weight checksum (model and EMA) and non-zero masked weights."""
    state = model.state_dict()
    stray = sum(int(state[k].masked_select(~m).count_nonzero()) for k, m in masks.items())
    return [checksum(model, ema), stray]


def check(session: Session, mine: list[int], step: int) -> list[list[int]]:
    """Every rank's fingerprint; an error when the ranks' weights differ (they never should:
    a difference means the processes no longer train one model)."""
    ranks = session.gather(mine)
    if any(r[0] != ranks[0][0] for r in ranks):
        raise PrunekitError(f"the {len(ranks)} processes hold different weights after step "
                            f"{step} (checksums {[r[0] for r in ranks]}); they no longer train "
                            f"one model: report this with the command")
    return ranks


def start_log(path: Path, start: int) -> None:
    """A fresh training log, or, on resume, the log up to the resumed step (later lines were
    written by steps the resumed run does again)."""
    kept = []
    if start and path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= start]
    from prunekit.files import write_atomic

    write_atomic(path, "".join(line + "\n" for line in kept).encode())


def log_step(path: Path, session: Session, mine: list[int], step: int, lr: float,
             parts: dict[str, float]) -> None:
    """One line of the training log (rank 0 writes, every rank contributes its fingerprint)."""
    ranks = check(session, mine, step) if session.distributed else [mine]
    if session.main:
        line = {"step": step, "lr": lr, **parts, "checksums": [r[0] for r in ranks],
                "masked_nonzero": [r[1] for r in ranks]}
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")
