"""Guards on what a user hands in: regular files only, finite numbers, a ceiling on work, renamed options.

Every guard raises a :class:`~matmeta.errors.MatmetaError` subclass with one line naming the input,
so a command refuses bad input before it starts work instead of failing (or hanging) in the middle.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

from matmeta.errors import MatmetaInputError, WorkLimitError

#: Structure files larger than this are refused unread (the largest cell allowed is 500 atoms).
MAX_STRUCTURE_FILE_BYTES = 64 * 2**20
#: CSV inputs (support sets, points, targets) larger than this are refused unread.
MAX_CSV_BYTES = 2 * 2**30


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def regular_file(path: str | Path, max_bytes: int | None = None) -> Path:
    """``path`` if it names a regular file (links followed) of at most ``max_bytes``; never opens it.

    A FIFO, socket or device could block a reader forever or stream without end, so only regular
    files are read as inputs.

    Raises:
        MatmetaInputError: ``"<path>: file not found"``, ``"<path>: is a FIFO, not a regular file"``, too large.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise MatmetaInputError(f"{path}: file not found") from None
    except OSError as exc:
        raise MatmetaInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError:  # a NUL byte in the name (e.g. from a CSV path column)
        raise MatmetaInputError(f"{str(path)!r}: not a usable file name (NUL byte)") from None
    if not stat.S_ISREG(info.st_mode):
        raise MatmetaInputError(f"{path}: is {_kind(info.st_mode)}, not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise MatmetaInputError(
            f"{path}: {info.st_size / 2**20:.0f} MiB; inputs above {max_bytes / 2**20:.0f} MiB are refused"
        )
    return path


def finite_number(
    option: str, value: float, *, low: float | None = None, high: float | None = None, strict_low: bool = False
) -> float:
    """``value`` as a float if it is finite and within ``[low, high]`` (``(low, high]`` with ``strict_low``).

    Raises:
        MatmetaInputError: ``"<option> <value>: must be a finite number ..."``.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MatmetaInputError(f"{option} {value!r}: must be a number") from None
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if strict_low else '>='} {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    too_low = low is not None and (number <= low if strict_low else number < low)
    too_high = high is not None and number > high
    if not math.isfinite(number) or too_low or too_high:
        rule = " and ".join(bounds)
        raise MatmetaInputError(f"{option} {value}: must be a finite number{' ' + rule if rule else ''}")
    return number


def within_ceiling(what: str, amount: int, ceiling: int, override: str, estimate: str = "") -> None:
    """Refuse ``amount`` units of work above ``ceiling`` unless the caller passed the override.

    Args:
        what: the work, e.g. ``"generate -n 100000"``.
        amount: its size.
        ceiling: the largest size done without asking (None-like 0 disables the check).
        override: how to ask for more, e.g. ``"--yes"``.
        estimate: the up-front estimate of the cost, said in the refusal.

    Raises:
        WorkLimitError: ``amount > ceiling``.
    """
    if ceiling and amount > ceiling:
        cost = f" ({estimate})" if estimate else ""
        raise WorkLimitError(
            f"{what}: {amount} exceeds the ceiling of {ceiling}{cost}; pass {override} to run it anyway"
        )


def renamed(old: str, new: str, old_value: Any, new_value: Any, default: Any = None) -> Any:
    """The value of an option renamed from ``old`` to ``new``; the old spelling works for one more release.

    ``None`` means "not given" for both. Given under the old name, one deprecation line naming the new
    one goes to stderr; given under both names, it is refused (which one was meant is not known).

    Raises:
        MatmetaInputError: ``"--old and --new: ..."`` when both were given.
    """
    if old_value is None:
        return default if new_value is None else new_value
    if new_value is not None:
        raise MatmetaInputError(f"{old} and {new}: the same option twice ({old} is its old name); give {new} only")
    from matmeta.console import warn

    warn(f"{old} is deprecated (removed in the next release): use {new}")
    return old_value


def renamed_argument(old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """A library argument renamed from ``old`` to ``new`` (kept for one release): a ``DeprecationWarning``.

    Raises:
        TypeError: both were given.
    """
    if old_value is None:
        return new_value
    if new_value is not None:
        raise TypeError(f"{old}= and {new}=: the same argument twice ({old} is its old name); give {new}= only")
    import warnings

    warnings.warn(f"{old}= is deprecated (removed in the next release): use {new}=", DeprecationWarning, stacklevel=3)
    return old_value
