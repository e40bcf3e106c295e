"""The `prunekit` command line: thin wrappers over the library, one file per command."""

from prunekit.cli import bench, data_kitti, data_synth, evaluate, init, stats  # noqa: F401  (each registers its command)
from prunekit.cli._app import app

__all__ = ["app"]
