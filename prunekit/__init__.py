"""prunekit: make object detectors small, fast and adversarially robust, and measure it."""

import logging

from prunekit._version import __version__

# torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on CPU-only machines.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

from prunekit.checkpoint import load_model, save_model  # noqa: E402

__all__ = ["__version__", "load_model", "save_model"]
