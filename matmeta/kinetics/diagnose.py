"""Why a curve's readings look odd for a JMAK curve, in one phrase a scientist can act on.

JMAK's X(t) rises monotonically from 0 towards its plateau. Readings that do not (they fall with time,
never leave 0, start at 1, do not change) have no finite least-squares fit with n > 0, and the
network's inner loop can end at n ≤ 0: then the curve is fitted under the prior alone and the
warning says which of these it is.
"""

from __future__ import annotations

import numpy as np

from matmeta.kinetics.data import Curve

FLAT = 0.01  # fractions within this of 0 (or of 1) count as "nothing yet" ("complete")


def odd_readings(curve: Curve, noise: float = 0.02) -> str | None:
    """A short reason why ``curve`` looks odd for JMAK, or None when it does not.

    Args:
        curve: the readings (a measured trace is judged on its smoothed trend).
        noise: σ of the fractions; a fall smaller than 3σ is noise, not a fall.
    """
    t, x = np.asarray(curve.time_s, dtype=float), np.asarray(curve.fraction, dtype=float)
    if curve.dense:
        width = max(1, len(x) // 20)
        x = np.convolve(x, np.ones(width) / width, mode="valid")
        t = t[width // 2 : width // 2 + len(x)]
        noise = max(noise, 0.02)
    if np.all(x <= FLAT):
        return "every fraction is 0: the transformation has not started at the last reading"
    if np.all(x >= 1 - FLAT):
        return "every fraction is 1: the transformation was complete at the first reading"
    if np.ptp(x) <= 3 * noise:
        return f"the fraction does not change with time (all readings within {np.ptp(x):.2g} of each other)"
    top = np.maximum.accumulate(x)
    drop = top - x
    i = int(np.argmax(drop))
    if drop[i] > 3 * noise:
        j = int(np.argmax(x[: i + 1]))
        return f"the fraction falls with time (X = {x[j]:.3g} at t = {t[j]:.4g} s, then {x[i]:.3g} at {t[i]:.4g} s)"
    return None
