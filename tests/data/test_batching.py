import numpy as np
import torch

from mirec.data.batching import TrainSampler, gather_windows, iter_eval_batches
from mirec.data.dataset import load_dataset
from tests.conftest import make_split, random_dataset


def slow_window(items, days, end, maxlen):
    """ComiRec/PIMI DataIterator: history = items[max(0, k-L):k], left-aligned, padded with 0."""
    hist = list(items[max(0, end - maxlen) : end])
    dd = list(days[max(0, end - maxlen) : end])
    pad = maxlen - len(hist)
    return hist + [0] * pad, [1.0] * len(hist) + [0.0] * pad, dd + [0] * pad


def test_gather_windows_matches_slow_reference():
    ds = random_dataset(n_users=30, seed=3)
    split = ds.train
    days = split.days()
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(split), size=20)
    ends = np.array([rng.integers(1, split.lengths[r] + 1) for r in rows])
    batch = gather_windows(split, days, rows, ends, maxlen=7)
    for b, (r, e) in enumerate(zip(rows, ends, strict=True)):
        lo, hi = split.indptr[r], split.indptr[r + 1]
        items, mask, dd = slow_window(split.items[lo:hi], days[lo:hi], e, 7)
        assert batch.items[b].tolist() == items
        assert batch.mask[b].tolist() == mask
        assert batch.days[b].tolist() == dd


def test_days_are_whole_days_since_first_interaction_plus_one():
    day = 86400
    split = make_split([[1, 2, 3], [4, 5]], times=[[10 * day, 10 * day + 3600, 13 * day + 50000], [5 * day, 5 * day]])
    # PIMI_Rec: int(round((t - t_min) / 86400) + 1); 3 days + 50000 s = 3.58 days -> 4, +1 = 5
    assert split.days().tolist() == [1, 1, 5, 1, 1]


def test_train_sampler_cut_range_and_target():
    split = make_split([list(range(1, 11)), list(range(11, 17))])
    sampler = TrainSampler(split, maxlen=3, batch_size=2, seed=0, min_cut=4)
    seen = set()
    for _ in range(300):
        batch = sampler.sample()
        for b in range(2):
            target = int(batch.targets[b])
            hist = [int(x) for x in batch.items[b] if x > 0]
            seq = list(range(1, 11)) if target <= 10 else list(range(11, 17))
            k = seq.index(target)
            assert 4 <= k <= len(seq) - 1  # ComiRec: k ~ U[4, len-1]
            assert hist == seq[max(0, k - 3) : k]
            seen.add(target)
    # every allowed cut is drawn: items at positions 4..9 and 4..5
    assert seen == set(range(5, 11)) | {15, 16}


def test_sampler_state_roundtrip_reproduces_batches():
    ds = random_dataset(seed=1)
    a = TrainSampler(ds.train, 5, 8, seed=42)
    a.sample()
    state = a.state()
    expected = a.sample()
    b = TrainSampler(ds.train, 5, 8, seed=7)
    b.set_state(state)
    got = b.sample()
    assert torch.equal(expected.items, got.items) and torch.equal(expected.targets, got.targets)


def test_eval_batches_history_and_targets(tmp_path):
    ds = random_dataset(seed=2)
    ds.save(tmp_path / "prep")
    loaded = load_dataset(tmp_path / "prep")
    split = loaded.valid
    seen = 0
    for eb in iter_eval_batches(split, maxlen=4, batch_size=3):
        for b, r in enumerate(eb.rows):
            items, _ = split.sequence(r)
            cut = int(split.history_len[r])
            assert eb.targets[b].tolist() == list(items[cut:])
            assert eb.history[b].tolist() == list(items[:cut])
            assert [int(x) for x in eb.batch.items[b] if x > 0] == list(items[max(0, cut - 4) : cut])
            seen += 1
    assert seen == len(split)
