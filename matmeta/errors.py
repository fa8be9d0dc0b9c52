"""Errors a user can cause. The CLI prints their one-line message and exits non-zero."""


class MatmetaError(Exception):
    """Base class: a problem with the user's input, data, model or settings.

    The message is kept to one line: line breaks from a wrapped library's message (pymatgen, ase,
    lmdb) are joined, so every error prints as exactly one line.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (" ".join(part.strip() for part in args[0].splitlines() if part.strip()),)
        super().__init__(*args)


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


class WorkLimitError(MatmetaError):
    """A request above a work ceiling (candidates, support size) without the override (``--yes``)."""
