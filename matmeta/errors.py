"""Errors a user can cause. The CLI prints their one-line message and exits non-zero."""


class MatmetaError(Exception):
    """Base class: a problem with the user's input, data, model or settings."""


class MatmetaInputError(MatmetaError):
    """A file, row or value the user supplied cannot be used ("<input>: <reason>")."""


class StoreError(MatmetaError):
    """A graph store is missing, corrupt or built with incompatible settings."""


class CheckpointError(MatmetaError):
    """A checkpoint is missing, corrupt, unsafe or does not match the model or data."""


class TrainingDivergedError(MatmetaError):
    """Meta-training produced a non-finite loss or gradient."""


class RecipeError(MatmetaError):
    """A recipe TOML is missing, malformed or names unknown settings."""
