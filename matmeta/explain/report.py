"""What an explanation holds and how it is shown as tables: rows, robust z-scores, rank correlation."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matmeta.atomic import write_table

FLAG_Z = 3.5


CHECK = "check this measurement"


class Table:
    """Rows of one dataclass type with column access and an atomic ``to_csv`` (no pandas needed).

    Args:
        rows: dataclass instances, all of the same type.
        columns: column names (default: the dataclass fields of the first row).
    """

    def __init__(self, rows: Sequence[Any], columns: Sequence[str] | None = None) -> None:
        self.rows = list(rows)
        if columns is None:
            columns = [f.name for f in dataclasses.fields(self.rows[0])] if self.rows else []
        self.columns = tuple(columns)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def __getitem__(self, key: int | str) -> Any:
        """``table[i]`` is a row, ``table["name"]`` a column (list)."""
        if isinstance(key, str):
            return self.column(key)
        return self.rows[key]

    def column(self, name: str) -> list[Any]:
        """Values of one column, in row order."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns: {', '.join(self.columns)}")
        return [getattr(row, name) for row in self.rows]

    def to_dicts(self) -> list[dict[str, Any]]:
        """Rows as plain dicts (e.g. for ``pandas.DataFrame`` or JSON)."""
        return [{c: getattr(row, c) for c in self.columns} for row in self.rows]

    def to_csv(self, path: str | Path) -> Path:
        """Write the table as CSV, atomically; returns the path."""
        return write_table(path, self.to_dicts(), self.columns)

    def __repr__(self) -> str:
        return f"Table({len(self.rows)} rows; columns: {', '.join(self.columns)})"


@dataclass(frozen=True)
class InfluenceRow:
    """Influence of one support point on one adapted query prediction.

    ``influence_*`` = prediction with all support points − prediction without this one (in the units of
    the query output); ``rank`` 1 is the largest ``|influence_loo|`` for this query.
    """

    query: str
    support: str
    rank: int
    influence_loo: float
    influence_approx: float
    prediction: float
    prediction_without: float
    support_loo_loss: float
    support_z: float
    check: str


@dataclass(frozen=True)
class SelfInfluenceRow:
    """A support point's own leave-one-out loss, its robust z-score and whether it is flagged."""

    support: str
    loo_loss: float
    robust_z: float
    flagged: bool


@dataclass
class Explanation:
    """Influence of every support point on every query output.

    Shapes:
        predictions: (m,) adapted predictions with the full support set.
        loo: (n, m) exact leave-one-out influence, ``predictions − prediction without point i``.
        approx: (n, m) the through-the-inner-loop estimate of ``loo`` (None when not computed).
        loo_loss: (n,) loss of point i under the model adapted without it (self-influence).
        robust_z: (n,) modified z-score of ``sqrt(loo_loss)`` (see :func:`robust_z`).
        spearman: (m,) rank correlation between ``loo[:, j]`` and ``approx[:, j]`` (NaN if undefined).
    """

    support_names: list[str]
    query_names: list[str]
    predictions: np.ndarray
    loo: np.ndarray
    approx: np.ndarray | None
    loo_loss: np.ndarray
    robust_z: np.ndarray
    spearman: np.ndarray
    flag_z: float = FLAG_Z
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def flagged(self) -> list[str]:
        """Support points whose leave-one-out error is far above the rest ("check this measurement"), worst first."""
        order = np.argsort(-self.robust_z, kind="stable")
        return [self.support_names[i] for i in order if self.robust_z[i] > self.flag_z]

    @property
    def influence(self) -> Table:
        """One row per (query, support point), ranked by ``|influence_loo|`` within each query."""
        rows = []
        n = len(self.support_names)
        for j, query in enumerate(self.query_names):
            order = np.argsort(-np.abs(self.loo[:, j]), kind="stable")
            for rank, i in enumerate(order, start=1):
                z = float(self.robust_z[i])
                rows.append(
                    InfluenceRow(
                        query=query,
                        support=self.support_names[i],
                        rank=rank,
                        influence_loo=float(self.loo[i, j]),
                        influence_approx=float(self.approx[i, j]) if self.approx is not None else math.nan,
                        prediction=float(self.predictions[j]),
                        prediction_without=float(self.predictions[j] - self.loo[i, j]),
                        support_loo_loss=float(self.loo_loss[i]),
                        support_z=z,
                        check=CHECK if z > self.flag_z else "",
                    )
                )
        assert len(rows) == n * len(self.query_names)
        return Table(rows)

    @property
    def self_influence(self) -> Table:
        """One row per support point, largest leave-one-out loss first."""
        order = np.argsort(-self.loo_loss, kind="stable")
        return Table(
            [
                SelfInfluenceRow(
                    support=self.support_names[i],
                    loo_loss=float(self.loo_loss[i]),
                    robust_z=float(self.robust_z[i]),
                    flagged=bool(self.robust_z[i] > self.flag_z),
                )
                for i in order
            ]
        )

    def to_csv(self, path: str | Path) -> Path:
        """Write :attr:`influence` (with the self-influence columns) as CSV, atomically."""
        return self.influence.to_csv(path)


def robust_z(abs_errors: np.ndarray) -> np.ndarray:
    """Modified z-score of absolute residuals: ``0.6745 |e_i| / median_j |e_j|`` (Iglewicz & Hoaglin).

    For residuals centred on 0 (leave-one-out residuals of an unbiased fit), the median absolute
    deviation is ``median |e|`` and this is the usual ``0.6745 (e − median) / MAD``; a score above 3.5
    is an outlier. Working on ``|e|`` (rather than a MAD of ``|e|`` around its own median) keeps the
    false-alarm rate for Gaussian residuals at about 5e-4 per point. When more than half the errors are
    exactly 0 the mean (``0.7979 σ`` for a half-normal) sets the scale; if all are 0, every score is 0.

    Shapes:
        abs_errors: (n,) non-negative; returns (n,).
    """
    errors = np.abs(np.asarray(abs_errors, dtype=float))
    median = np.median(errors)
    if median > 0:
        return 0.6745 * errors / median
    mean = errors.mean()
    if mean > 0:
        return 0.7979 * errors / mean
    return np.zeros_like(errors)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant.

    Shapes:
        a, b: (n,).
    """
    from scipy.stats import rankdata

    ra, rb = rankdata(np.asarray(a, dtype=float)), rankdata(np.asarray(b, dtype=float))
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])
