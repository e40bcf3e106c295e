"""Stopping a training run cleanly: Ctrl-C or a scheduler's SIGTERM takes effect at a step
boundary, where the state the loop saves is one an uninterrupted run passes through."""

from __future__ import annotations

from typing import Any


class StepBoundaryInterrupt:
    """Defer Ctrl-C (SIGINT) or a scheduler's SIGTERM to the end of the training step it arrives
    in.

    A KeyboardInterrupt raised mid-step (after the optimiser step, before the EMA update or the
    step count) would save a state that no uninterrupted run passes through, and ``--resume``
    would then diverge from it. The first signal only sets ``requested``; the loop saves
    the state and stops at the next step boundary (Slurm sends SIGTERM at a job's time limit,
    SIGKILL 30 s later by default). A second signal interrupts at once (the last periodic state
    is kept). Only the main thread can own signal handlers; elsewhere this does nothing.

    Under torchrun only Ctrl-C is deferred: torchrun stops its workers with SIGTERM when one of
    them has failed, and the others, blocked in a collective with the dead one, would never
    reach a step boundary; they stop at once and the periodic state is what a restart resumes.
    """

    def __init__(self, *, terminate: bool = True) -> None:
        self.requested = False
        self.terminate = terminate
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StepBoundaryInterrupt:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM)[:2 if self.terminate else 1]:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise ForcedInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


class ForcedInterrupt(KeyboardInterrupt):
    """A second Ctrl-C: stop now, mid-step, without saving a state."""
