"""Errors that saev raises for bad input. Each message names the file or value and the problem."""


class SaevError(Exception):
    """Base class: a problem with the user's input, reported without a deep traceback."""


class CheckpointError(SaevError):
    """An SAE checkpoint could not be read or written."""


class ModelError(SaevError):
    """A ViT could not be built, or a recording request does not match the model."""


class StoreError(SaevError):
    """An activation store is missing, inconsistent or cannot be written."""


class ConfigError(SaevError):
    """A configuration value is invalid; raised before any work starts."""


class ImageError(SaevError):
    """An image file cannot be decoded into RGB pixels."""


class TrainingError(SaevError):
    """Training stopped because a loss, the weights or the activations became non-finite."""


class DistributedError(SaevError):
    """Under torchrun, another process stopped answering (it failed, was killed, or timed out)."""


class NonFiniteError(SaevError):
    """A result to be saved holds NaN or infinity; nothing was written."""
