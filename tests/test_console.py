"""The phase timer that `meta-train` prints and stores."""

import itertools

import pytest

import matmeta.console
from matmeta.console import format_phases, timed


def test_timed_accumulates_per_phase_and_survives_errors(monkeypatch):
    clock = itertools.count(0.0, 1.5)  # every reading 1.5 s after the previous one
    monkeypatch.setattr(matmeta.console.time, "perf_counter", lambda: next(clock))
    phases: dict[str, float] = {}
    with timed(phases, "a"):
        pass
    with timed(phases, "a"):
        pass
    with pytest.raises(ValueError), timed(phases, "b"):
        raise ValueError("boom")
    assert phases == {"a": 3.0, "b": 1.5}
    with timed(None, "ignored"):  # no dict: nothing recorded, nothing raised
        pass


def test_format_phases_lists_phases_in_order_with_total():
    text = format_phases({"pooled pretraining": 92.06, "meta-training": 61.0})
    assert text == "pooled pretraining 92.1 s, meta-training 61.0 s (total 153.1 s)"
