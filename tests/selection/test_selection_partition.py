"""Partitioned selection: one part is the exact engine bit for bit; budgets, nesting, weights,
errors and parallel workers; the capped pre-sample; memory-mapped features."""
from __future__ import annotations

import numpy as np
import pytest

from mint.errors import MintError
from mint.selection import select_coreset
from mint.selection.distances import pairwise_distances
from mint.selection.facility import facility_value, similarity_from_distance
from mint.selection.partition import seat_order, split_parts

KW = dict(ratios=[0.05, 0.1, 0.2], n_jobs=1, progress=False)


def _features(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, d))
    base = centers[rng.integers(0, 8, n)]
    out = {}
    for kind, noise in (("sft", 0.3), ("pt", 0.4), ("ifl", 0.6)):
        X = base + noise * rng.normal(size=(n, d))
        out[kind] = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    return out


def _same(a, b):
    assert a.order.tobytes() == b.order.tobytes() and a.gains.tobytes() == b.gains.tobytes()
    for r in a.subsets:
        sa, sb = a.subsets[r], b.subsets[r]
        assert sa.indices.tobytes() == sb.indices.tobytes() and sa.weights.tobytes() == sb.weights.tobytes()
        assert (sa.e_pt, sa.e_ifl) == (sb.e_pt, sb.e_ifl)


@pytest.mark.parametrize("kw", [dict(alpha=0.7), dict(), dict(method="craig"), dict(coef=(0.5, 1.0, 2.0))])
def test_one_part_is_the_exact_engine_bit_for_bit(kw):
    feats = _features()
    exact = select_coreset(feats, strategy="exact", **KW, **kw)
    one = select_coreset(feats, strategy="partitioned", partition_size=300, **KW, **kw)
    _same(exact, one)
    assert one.settings["distance_strategy"] == "partitioned (1 parts)"


def test_seats_are_proportional_nested_and_bounded():
    sizes = [34, 33, 33, 5]
    seats = seat_order(sizes, 105)
    for k in range(1, 106):
        budget = np.bincount(seats[:k], minlength=4)
        assert budget.sum() == k and np.all(np.abs(budget - k * np.array(sizes) / sum(sizes)) <= 1.0 + 1e-9)
        assert np.all(budget <= sizes)
    assert np.bincount(seats, minlength=4).tolist() == sizes  # every row seated once the total is reached


def test_parts_cover_the_rows_once():
    parts = split_parts(1000, 300, seed=3)
    assert len(parts) == 4 and [len(p) for p in parts] == [250] * 4
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
    assert all(np.all(np.diff(p) > 0) for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, split_parts(1000, 300, seed=3)))
    assert not np.array_equal(parts[0], split_parts(1000, 300, seed=4)[0])


@pytest.mark.parametrize("kw", [dict(alpha=0.7), dict()])
def test_partitioned_result_is_well_formed_and_close_to_exact(kw):
    feats = _features(n=600)
    exact = select_coreset(feats, strategy="exact", **KW, **kw)
    part = select_coreset(feats, strategy="partitioned", partition_size=200, **KW, **kw)
    assert part.settings["distance_strategy"] == "partitioned (3 parts)"
    assert part.alpha == exact.alpha  # the pre-sample is the same
    d_pt = pairwise_distances(feats["pt"], dtype=np.float64)
    d_ifl = pairwise_distances(feats["ifl"], dtype=np.float64)
    S = similarity_from_distance(d_pt / part.alpha + d_ifl / (1 - part.alpha))
    prev = None
    for r in (0.05, 0.1, 0.2):
        sub, ex = part.subsets[r], exact.subsets[r]
        assert len(sub.indices) == len(ex.indices) == round(r * 600)
        assert len(set(sub.indices.tolist())) == len(sub.indices)
        assert sub.weights.sum() == 600 and np.all(sub.weights >= 0)
        if prev is not None:
            assert np.array_equal(sub.indices[: len(prev)], prev)  # nested across ratios
        prev = sub.indices
        # within-part errors are upper bounds of the errors over all selected elements
        assert sub.e_pt >= d_pt[:, sub.indices].min(axis=1).sum() - 1e-3
        assert sub.e_ifl >= d_ifl[:, sub.indices].min(axis=1).sum() - 1e-3
        assert facility_value(S, sub.indices) >= 0.95 * facility_value(S, ex.indices)


def test_workers_give_the_same_bytes():
    feats = _features(n=600)
    one = select_coreset(feats, strategy="partitioned", partition_size=200, alpha=0.7, **{**KW, "n_jobs": 1})
    two = select_coreset(feats, strategy="partitioned", partition_size=200, alpha=0.7, **{**KW, "n_jobs": 2})
    _same(one, two)


def test_fewer_seats_than_parts_sends_rows_to_the_nearest_selected_element():
    feats = _features(n=600)
    res = select_coreset(feats, strategy="partitioned", partition_size=100, alpha=0.6,
                         **{**KW, "ratios": [0.005, 0.05]})  # 3 seats for 6 parts
    small = res.subsets[0.005]
    assert len(small.indices) == 3 and small.weights.sum() == 600
    d = pairwise_distances(feats["pt"], dtype=np.float64)[:, small.indices]
    assert small.e_pt >= d.min(axis=1).sum() - 1e-3


def test_auto_strategy():
    feats = _features(n=300)
    assert select_coreset(feats, alpha=0.7, **KW).settings["distance_strategy"] == "blockwise"
    auto = select_coreset(feats, alpha=0.7, partition_size=100, **KW)
    assert auto.settings["distance_strategy"] == "partitioned (3 parts)"
    # a limit the exact engine fits: exact, whatever the partition size
    roomy = select_coreset(feats, alpha=0.7, partition_size=100, memory_limit_bytes=1 << 33, **KW)
    assert not roomy.settings["distance_strategy"].startswith("partitioned")
    tight = select_coreset(feats, alpha=0.7, partition_size=100, memory_limit_bytes=1_000_000, **KW)
    assert tight.settings["distance_strategy"] == "partitioned (3 parts)"


def test_capped_pre_sample():
    feats = _features(n=300)
    free = select_coreset(feats, **KW)
    assert free.curve.n_pre == 90
    # below the cap: exactly the uncapped behaviour
    _same(free, select_coreset(feats, preheat_max=90, **KW))
    capped = select_coreset(feats, preheat_max=40, **KW)
    assert capped.curve.n_pre == 40 and capped.curve.k_pre == 8


def test_memory_mapped_features_give_the_same_selection(tmp_path):
    feats = _features(n=400)
    mapped = {}
    for kind, X in feats.items():
        np.save(tmp_path / f"{kind}.npy", X)
        mapped[kind] = np.load(tmp_path / f"{kind}.npy", mmap_mode="r")
    for kw in (dict(strategy="exact"), dict(strategy="partitioned", partition_size=150)):
        _same(select_coreset(feats, alpha=0.7, **KW, **kw), select_coreset(mapped, alpha=0.7, **KW, **kw))


@pytest.mark.parametrize("kw,message", [
    (dict(strategy="fast"), "unknown strategy 'fast'"),
    (dict(partition_size=1), "partition_size must be a whole number >= 2"),
    (dict(partition_size=2.5), "partition_size must be a whole number >= 2"),
    (dict(preheat_max=1), "preheat_max must be a whole number >= 2"),
    (dict(n_jobs=0), "n_jobs must be a whole number >= 1"),
])
def test_bad_settings(kw, message):
    with pytest.raises(MintError, match=message):
        select_coreset(_features(n=50), **{**KW, **kw})


def test_float16_features_select_as_their_float32_values():
    """float16 storage: the engine computes in float32 from the stored values, so the selection
    equals the one on those values cast to float32, bit for bit, for both strategies."""
    half = {k: X.astype(np.float16) for k, X in _features(n=300).items()}
    cast = {k: X.astype(np.float32) for k, X in half.items()}
    for kw in (dict(strategy="exact"), dict(strategy="partitioned", partition_size=100), dict()):
        _same(select_coreset(half, **KW, **kw), select_coreset(cast, **KW, **kw))


def test_kmeans_parts_cover_the_rows_fit_and_follow_the_clusters():
    from mint.selection.distances import alpha_combination
    from mint.selection.partition import kmeans_parts

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6)) * 5
    label = rng.integers(0, 4, 900)
    feats = {k: (centres[label] + rng.normal(size=(900, 6))).astype(np.float32) for k in ("pt", "ifl")}
    combo = alpha_combination(0.6)
    parts = kmeans_parts(feats, combo, 900, 240, seed=1)  # 4 centres for the 4 clusters
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(900))
    assert all(len(p) <= 240 and np.all(np.diff(p) > 0) for p in parts)
    # each part is (nearly) one cluster: the points of a part share their true label
    purity = [np.bincount(label[p]).max() / len(p) for p in parts]
    assert min(purity) > 0.95
    again = kmeans_parts(feats, combo, 900, 240, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))  # same seed, same parts
    assert kmeans_parts(feats, combo, 900, 1000, seed=1)[0].tolist() == list(range(900))  # one part


def test_kmeans_partitioned_selection_is_well_formed_and_checked():
    feats = _features(n=600)
    res = select_coreset(feats, strategy="partitioned", partition_size=200, partition="kmeans", **KW)
    assert "k-means parts" in res.settings["distance_strategy"]
    for sub in res.subsets.values():
        assert sub.weights.sum() == 600 and len(set(sub.indices.tolist())) == len(sub.indices)
    two = select_coreset(feats, strategy="partitioned", partition_size=200, partition="kmeans",
                         **{**KW, "n_jobs": 2})
    assert two.order.tobytes() == res.order.tobytes()
    with pytest.raises(MintError, match="partition 'tree' is not one of random, kmeans"):
        select_coreset(feats, strategy="partitioned", partition="tree", **KW)


# ----------------------------------------------------------------------------- second round (GreeDi)


def _plain_second_round(feats, candidates, alpha, k, ks):
    """The reference: distances from every row to each candidate in float64, naive greedy on
    `max(D) - D`, weights by argmax, errors as the minimum distance sums."""
    from mint.selection.facility import naive_greedy, nearest_weights

    def dist(X):
        X = X.astype(np.float64)
        d = np.sqrt(np.maximum(((X[:, None, :] - X[None, candidates, :]) ** 2).sum(-1), 0))
        d[candidates, np.arange(len(candidates))] = 0
        return d

    d_pt, d_ifl = dist(feats["pt"]), dist(feats["ifl"])
    D = d_pt / alpha + d_ifl / (1 - alpha)
    order, _ = naive_greedy(D.max() - D, k)
    picked = candidates[order]
    w = {m: nearest_weights(D.max() - D, order[:m]) for m in ks}
    e = {m: (d_pt[:, order[:m]].min(axis=1).sum(), d_ifl[:, order[:m]].min(axis=1).sum()) for m in ks}
    return picked, w, e


def test_second_round_equals_a_plain_greedy_over_the_parts_picks():
    from mint.selection.partition import GREEDI_OVERSAMPLE

    feats = {k: X.astype(np.float64) for k, X in _features(n=240, d=8).items()}
    kw = dict(strategy="partitioned", partition_size=80, alpha=0.7, dtype="float64", **{**KW, "ratios": [0.05, 0.1]})
    one = select_coreset(feats, **kw)  # round one alone, at twice the budget: the candidates
    assert one.settings["distance_strategy"] == "partitioned (3 parts)"
    two = select_coreset(feats, second_round=True, **kw)
    assert two.settings["distance_strategy"] == "partitioned (3 parts, GreeDi second round)"
    wide = select_coreset(feats, **{**kw, "ratios": [GREEDI_OVERSAMPLE * 0.1]})
    candidates = np.sort(wide.order)
    ks = [len(two.subsets[r].indices) for r in (0.05, 0.1)]
    picked, w, e = _plain_second_round(feats, candidates, 0.7, ks[-1], ks)
    assert np.array_equal(two.order, picked)
    for r, m in zip((0.05, 0.1), ks):
        sub = two.subsets[r]
        assert np.array_equal(sub.indices, picked[:m]) and np.array_equal(sub.weights, w[m])
        assert sub.weights.sum() == 240
        assert np.allclose((sub.e_pt, sub.e_ifl), e[m], rtol=1e-9)  # the exact errors over all rows


def test_second_round_is_nested_closer_to_exact_and_worker_independent():
    feats = _features(n=900)
    exact = select_coreset(feats, strategy="exact", **KW)
    kw = dict(strategy="partitioned", partition_size=300, second_round=True, **KW)
    two = select_coreset(feats, **kw)
    first = select_coreset(feats, strategy="partitioned", partition_size=300, **KW)
    _same(two, select_coreset(feats, **{**kw, "n_jobs": 2}))
    d_pt = pairwise_distances(feats["pt"], dtype=np.float64)
    d_ifl = pairwise_distances(feats["ifl"], dtype=np.float64)
    S = similarity_from_distance(d_pt / two.alpha + d_ifl / (1 - two.alpha))
    prev = None
    for r in KW["ratios"]:
        sub = two.subsets[r]
        assert sub.weights.sum() == 900 and len(set(sub.indices.tolist())) == len(sub.indices)
        if prev is not None:
            assert np.array_equal(sub.indices[: len(prev)], prev)
        prev = sub.indices
        assert sub.e_pt == pytest.approx(d_pt[:, sub.indices].min(axis=1).sum(), rel=1e-5)
        f = [facility_value(S, x.subsets[r].indices) for x in (exact, first, two)]
        assert f[2] > f[1] and f[2] >= 0.99 * f[0]


def test_second_round_with_one_part_is_exact_and_refused_when_too_large():
    feats = _features(n=300)
    _same(select_coreset(feats, strategy="exact", **KW),
          select_coreset(feats, strategy="partitioned", partition_size=300, second_round=True, **KW))
    with pytest.raises(MintError, match=r"second round \(GreeDi\) needs about 2.8 MiB .one 300 x 120 matrix.* limit is 1.0 MiB; turn it off .*second_round: false"):
        select_coreset(feats, strategy="partitioned", partition_size=100, second_round=True, alpha=0.7,
                       memory_limit_bytes=1_000_000, **KW)
    with pytest.raises(MintError, match="second_round must be true or false"):
        select_coreset(feats, second_round="yes", **KW)


class _SharedStore:
    """One rank's view of a part store shared by `world` ranks (threads here, torchrun ranks in
    `mint select`): part p is computed by rank p % world, `sync` waits for every rank."""

    def __init__(self, files: dict, rank: int, world: int, barrier):
        self.files, self.rank, self.barrier = files, rank, barrier
        self.mine = lambda p: p % world == rank

    def get(self, p, fingerprint):
        found = self.files.get(p)
        return found[1] if found is not None and found[0] == fingerprint else None

    def put(self, p, fingerprint, result):
        self.files[p] = (fingerprint, result)

    def sync(self):
        self.barrier.wait(timeout=60)


def test_second_round_over_a_shared_store_runs_once_and_every_rank_gets_its_result(monkeypatch):
    import threading

    import mint.selection.partition as partition

    feats = _features(n=240, d=8)
    kw = dict(strategy="partitioned", partition_size=80, second_round=True, alpha=0.7, **KW)
    alone = select_coreset(feats, **kw)
    real, callers = partition.second_round_select, []
    monkeypatch.setattr(partition, "second_round_select",
                        lambda *a, **k: callers.append(threading.current_thread().name) or real(*a, **k))
    files, barrier, results = {}, threading.Barrier(2), {}

    def rank(r):
        results[r] = select_coreset(feats, part_cache=_SharedStore(files, r, 2, barrier), **kw)

    threads = [threading.Thread(target=rank, args=(r,), name=f"rank{r}") for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert callers == ["rank1"]  # 3 parts, so the second round is slot 3, owned by rank 1 of 2
    assert sorted(files) == [0, 1, 2, 3]
    for r in (0, 1):
        _same(alone, results[r])
    callers.clear()  # a rerun over the same store reads the second round back
    _same(alone, select_coreset(feats, part_cache=_SharedStore(files, 0, 1, threading.Barrier(1)), **kw))
    assert callers == []
