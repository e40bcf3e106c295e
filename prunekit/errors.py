"""Typed errors. The CLI turns each into one line on stderr and exit code 1."""


class PrunekitError(Exception):
    """Bad input or a failed precondition, with a message that names the problem and the fix."""


class CheckpointError(PrunekitError):
    """A checkpoint that cannot be read, or that lacks what a command needs."""


class DataError(PrunekitError):
    """A dataset, image, label or results file that cannot be used."""


class ModelError(PrunekitError):
    """An architecture, Darknet file or weight layout that does not fit."""
