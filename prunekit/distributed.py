"""Several processes training one model: torchrun's environment, the process group, and the few
collectives training needs.

``torchrun --nproc-per-node N -m prunekit finetune ...`` starts N copies of the command with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous in the environment; :func:`session`
reads them, joins the process group (gloo on CPU, NCCL on CUDA, one GPU per local rank) and
leaves it when the block ends, after every rank has got there, so rank 0's output file is
complete before any process exits. Without torchrun the session is a single process and every
collective is a no-op, so the training loop has one code path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunekit.device import resolve_device
from prunekit.errors import PrunekitError


@dataclass(frozen=True)
class Session:
    """This process's place among the processes training one model."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    restarts: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (e.g. a Ctrl-C seen by one rank)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of each value over the ranks (losses for the log and the progress line)."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return dict(zip(keys, (t / self.world).tolist(), strict=True))

    def gather(self, values: list[int]) -> list[list[int]]:
        """Every rank's ``values`` (same length everywhere), in rank order."""
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        if not self.distributed:
            return [values]
        out = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(out, t)
        return [o.tolist() for o in out]

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

        Without SyncBatchNorm each rank updates its running statistics from its own share of
        the batch; taking rank 0's after every step keeps the model, and so the EMA, identical
        on every rank (DDP itself would broadcast them only at the next forward).
        """
        if not self.distributed:
            return
        for b in module.buffers():
            torch.distributed.broadcast(b, 0)


def from_environment(device: str = "auto") -> Session:
    """The session torchrun describes in the environment (a single process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if world <= 1:
        return Session(device=resolve_device(device), restarts=restarts)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise PrunekitError(f"local rank {local} has no GPU (this node has "
                                f"{torch.cuda.device_count()}); start at most one process per "
                                f"GPU (--nproc-per-node)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    return Session(rank=rank, world=world, device=dev, restarts=restarts)


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Session]:
    """Join the process group torchrun set up (if any) for the block; leave it afterwards.

    On a clean exit every rank waits for the others first (rank 0 may still be writing); on an
    error the group is left at once, so torchrun sees the failure and stops the others.
    """
    s = from_environment(device)
    if not s.distributed:
        yield s
        return
    backend = "nccl" if s.device.type == "cuda" else "gloo"
    kwargs = {"device_id": s.device} if s.device.type == "cuda" else {}
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's agent serves the rendezvous store and keeps it across restarts; without a
        # prefix of its own per attempt, a restarted group read the failed group's addresses
        # and waited on dead ports (gloo "connection refused", torch 2.14).
        agent = torch.distributed.TCPStore(os.environ["MASTER_ADDR"],
                                           int(os.environ["MASTER_PORT"]), s.world,
                                           is_master=False)
        kwargs["store"] = torch.distributed.PrefixStore(f"prunekit/attempt-{s.restarts}", agent)
        kwargs.update(rank=s.rank, world_size=s.world)
    # torch's default timeout (10 min NCCL, 30 min gloo) bounds the ranks' wait while rank 0
    # alone validates and writes the output.
    torch.distributed.init_process_group(backend, **kwargs)
    try:
        yield s
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def checksum(*modules: nn.Module) -> int:
    """An exact fingerprint of the modules' parameters and buffers: any changed bit changes it
    (almost surely), so equal fingerprints across ranks mean identical weights."""
    total = torch.zeros((), dtype=torch.int64)
    k = 0
    for module in modules:
        for t in module.state_dict().values():
            k += 1
            total = total + _words(t.detach()).mul(k * 2654435761 % 2**31).sum().cpu()
    return int(total)


def _words(t: Tensor) -> Tensor:
    """The tensor's bits as int64 words (a float32 weight as its int32 pattern)."""
    t = t.contiguous().reshape(-1)
    if t.dtype.is_floating_point and t.element_size() == 4:
        return t.view(torch.int32).to(torch.int64)
    if t.dtype.is_floating_point and t.element_size() == 2:
        return t.view(torch.int16).to(torch.int64)
    if t.dtype.is_floating_point:
        return t.view(torch.int64)
    return t.to(torch.int64)


def wrap(model: nn.Module, s: Session) -> nn.Module:
    """The module the training forward goes through: DistributedDataParallel across the ranks
    (gradients averaged in backward), or the model itself in a single process.

    SyncBatchNorm (batch statistics over every rank's share of the batch) only on CUDA: it does
    not run on CPU. Buffers are not synchronised at each forward: the loop copies rank 0's after
    every step (:meth:`Session.broadcast_buffers`).
    """
    if not s.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if s.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[s.device.index] if s.device.type == "cuda"
                                   else None, forward_sync_buffers=False)
