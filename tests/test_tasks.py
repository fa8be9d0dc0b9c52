from collections import Counter

import numpy as np
import pytest
import torch

from matmeta.errors import MatmetaInputError
from matmeta.tasks import EpisodeSampler, split_families


def item_families(sizes):
    keys = []
    for family, size in sizes.items():
        keys.extend([family] * size)
    return keys


SIZES = {f"F{k:02d}": 20 + k for k in range(40)} | {"tiny": 3}


def test_split_is_disjoint_complete_and_seeded():
    keys = item_families(SIZES)
    split = split_families(keys, (0.7, 0.15, 0.15), seed=3, min_size=10)
    train, val, test = set(split.train), set(split.val), set(split.test)
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(SIZES) - {"tiny"}
    assert split.dropped == ("tiny",)
    assert (len(train), len(val), len(test)) == (28, 6, 6)
    assert split_families(keys, seed=3, min_size=10) == split
    assert split_families(keys, seed=4, min_size=10) != split
    assert list(split.train) == sorted(split.train)


def test_split_small_and_bad_inputs():
    split = split_families(["a", "b", "c"], seed=0)
    assert len(split.train) == len(split.val) == len(split.test) == 1
    with pytest.raises(ValueError, match="sum"):
        split_families(["a", "b"], (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="no family"):
        split_families(["a"], min_size=2)


def test_episodes_are_disjoint_and_from_one_family():
    keys = item_families(SIZES)
    families = [f for f in SIZES if f != "tiny"]
    sampler = EpisodeSampler(keys, families, k_support=5, k_query=10, seed=0)
    key_array = np.array(keys)
    for _ in range(50):
        episode = sampler.sample()
        assert episode.support.shape == (5,) and episode.query.shape == (10,)
        assert episode.support.dtype == np.int64
        assert not set(episode.support) & set(episode.query)
        assert set(key_array[episode.support]) == set(key_array[episode.query]) == {episode.family}


def test_episodes_are_reproducible_with_numpy_and_torch_generators():
    keys = item_families(SIZES)
    families = list(SIZES)[:10]

    def draw(rng):
        sampler = EpisodeSampler(keys, families, 5, 5, seed=7)
        return [(e.family, e.support.tolist(), e.query.tolist()) for e in sampler.sample_many(5, rng)]

    assert draw(None) == draw(None)
    assert draw(np.random.default_rng(1)) == draw(np.random.default_rng(1))
    assert draw(np.random.default_rng(1)) != draw(np.random.default_rng(2))
    assert draw(torch.Generator().manual_seed(3)) == draw(torch.Generator().manual_seed(3))
    assert draw(torch.Generator().manual_seed(3)) != draw(torch.Generator().manual_seed(4))


def test_uniform_family_weighting():
    keys = item_families({"big": 1000, "small": 20})
    sampler = EpisodeSampler(keys, ["big", "small"], 5, 5, seed=0)
    counts = Counter(sampler.sample().family for _ in range(2000))
    assert abs(counts["big"] - 1000) < 120  # binomial sd ≈ 22
    sized = EpisodeSampler(keys, ["big", "small"], 5, 5, seed=0, weighting="size")
    counts = Counter(sized.sample().family for _ in range(2000))
    assert counts["small"] < 100  # expected 2000 * 20/1020 ≈ 39


def test_query_rest_and_fixed_episodes():
    keys = item_families({"a": 12, "b": 15})
    sampler = EpisodeSampler(keys, ["a", "b"], 5, None, seed=0)
    episode = sampler.sample(family="b")
    assert len(episode.support) == 5 and len(episode.query) == 10
    assert sorted(np.concatenate([episode.support, episode.query]).tolist()) == sampler.members("b").tolist()
    fixed = sampler.fixed_episodes(per_family=2, seed=1)
    assert [e.family for e in fixed] == ["a", "a", "b", "b"]
    again = sampler.fixed_episodes(per_family=2, seed=1)
    assert all(np.array_equal(x.support, y.support) for x, y in zip(fixed, again, strict=True))


def test_sampler_errors():
    keys = item_families({"a": 12, "b": 4})
    with pytest.raises(MatmetaInputError, match=r"fewer than k_support \+ k_query = 10 items: b \(4\)"):
        EpisodeSampler(keys, ["a", "b"], 5, 5)
    with pytest.raises(MatmetaInputError, match="family 'zz' has no item"):
        EpisodeSampler(keys, ["zz"], 1, 1)
    sampler = EpisodeSampler(keys, ["a"], 5, 5)
    with pytest.raises(MatmetaInputError, match="not one of its families"):
        sampler.sample(family="b")
