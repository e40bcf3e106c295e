"""The `prunekit` command line: thin wrappers over the library, one file per command."""

from prunekit.cli import (  # noqa: F401  (each module registers its command)
    attack,
    bench,
    data_kitti,
    data_synth,
    detect,
    evaluate,
    export,
    finetune,
    grid,
    history,
    init,
    mask,
    score,
    stats,
)
from prunekit.cli._app import app

__all__ = ["app"]
