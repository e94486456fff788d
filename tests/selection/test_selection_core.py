"""`select_coreset`: the contract of docs/design.md section 3, a plain float64 reference of the
whole MINT selection, the baselines, the memory limit, and every bad input."""
from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from mint import SelectionResult, Subset, select_coreset
from mint.errors import MintError
from mint.selection.alpha import alpha_grid
from mint.selection.core import estimate_memory


def make_features(n=60, d=8, seed=0, kinds=("sft", "pt", "ifl")):
    rng = np.random.default_rng(seed)
    out = {}
    for i, kind in enumerate(kinds):
        centers = rng.normal(size=(4 + i, d))
        X = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.normal(size=(n, d))
        out[kind] = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    return out


# --------------------------------------------------------------------------- plain reference


def _dist(X):
    X = np.asarray(X, dtype=np.float64)
    return np.linalg.norm(X[:, None, :] - X[None, :, :], axis=2)


def _greedy(S, k):
    cur = np.zeros(len(S))
    order = []
    for _ in range(k):
        g = np.maximum(S - cur[:, None], 0).sum(axis=0)
        g[order] = -np.inf
        order.append(int(np.argmax(g)))
        cur = np.maximum(cur, S[:, order[-1]])
    return order


def _plateau(alphas, e_ifl):
    diffs = [abs(e_ifl[i + 1] - e_ifl[i]) for i in range(len(e_ifl) - 1)]
    med = np.median(diffs)
    sigma = max(1.4826 * np.median([abs(x - med) for x in diffs]), 1e-8)
    starts = [i + 1 for i in range(len(diffs) - 2) if max(diffs[i], diffs[i + 1], diffs[i + 2]) <= sigma]
    high = [s for s in starts if alphas[s] >= 0.95]
    return alphas[(high or starts or [len(alphas) - 1])[0]]


def _golden(f, lo=0.001, hi=0.999, tol=1e-3, max_iter=40):
    """BRIEF's search written out (the textbook form: the surviving inner point is kept, one new
    point per step); points rounded to 6 decimals; the best point evaluated wins, the smaller
    alpha on a tie (E_PT + E_IFL is a step function of alpha, so ties are common)."""
    r = (5 ** 0.5 - 1) / 2
    seen = {}

    def val(x):
        x = round(x, 6)
        if x not in seen:
            seen[x] = f(x)
        return seen[x]

    c, d = hi - r * (hi - lo), lo + r * (hi - lo)
    for _ in range(max_iter):
        if hi - lo <= tol:
            break
        if val(c) <= val(d):  # the minimum is left of d
            hi, d = d, c
            c = hi - r * (hi - lo)
        else:
            lo, c = c, d
            d = lo + r * (hi - lo)
    val(c), val(d)
    return min(seen, key=lambda x: (seen[x], x))


def plain_mint(feats, ratios, preheat=0.3, seed=0, rule="plateau"):
    n = len(feats["pt"])
    n_pre = max(2, round(preheat * n))
    pre = np.random.default_rng(seed).choice(n, n_pre, replace=False)
    k_pre = max(1, round(max(ratios) * n_pre))
    d_pt, d_ifl = _dist(feats["pt"][pre]), _dist(feats["ifl"][pre])

    def errors(a):
        D = d_pt / a + d_ifl / (1 - a)
        order = _greedy(D.max() - D, k_pre)
        return d_pt[:, order].min(axis=1).sum(), d_ifl[:, order].min(axis=1).sum()

    if rule == "golden":
        a = _golden(lambda x: sum(errors(x)))
    else:
        alphas = alpha_grid()
        a = _plateau(alphas, [errors(x)[1] for x in alphas])
    D = _dist(feats["pt"]) / a + _dist(feats["ifl"]) / (1 - a)
    S = D.max() - D
    order = _greedy(S, max(1, round(max(ratios) * n)))
    weights = {}
    for r in ratios:
        sel = order[: max(1, round(r * n))]
        weights[r] = np.bincount(np.argmax(S[:, sel], axis=1), minlength=len(sel))
    return a, np.array(order), weights


def test_float64_matches_plain_reference():
    feats = make_features(n=70, seed=3)
    ratios = [0.05, 0.1, 0.2]
    res = select_coreset(feats, ratios=ratios, dtype="float64", n_jobs=1, progress=False)  # the default: plateau
    assert res.alpha_method == "plateau"
    a, order, weights = plain_mint(feats, ratios)
    assert res.alpha == a
    np.testing.assert_array_equal(res.order, order)
    for r in ratios:
        np.testing.assert_array_equal(res.subsets[r].weights, weights[r])


def test_golden_rule_matches_plain_reference():
    feats = make_features(n=70, seed=3)
    ratios = [0.05, 0.1, 0.2]
    res = select_coreset(feats, ratios=ratios, dtype="float64", alpha_method="golden", n_jobs=1, progress=False)
    assert res.alpha_method == "golden" and res.curve.method == "golden"
    a, order, weights = plain_mint(feats, ratios, rule="golden")
    assert res.alpha == a
    np.testing.assert_array_equal(res.order, order)
    for r in ratios:
        np.testing.assert_array_equal(res.subsets[r].weights, weights[r])


# --------------------------------------------------------------------------- contract


def test_contract_fields_prefixes_and_weights():
    feats = make_features()
    res = select_coreset(feats, ratios=[0.15, 0.05, 0.1], n_jobs=1, progress=False)
    assert isinstance(res, SelectionResult)
    assert 0 < res.alpha < 1 and res.alpha in alpha_grid()
    assert res.order.dtype == np.int64 and res.gains.dtype == np.float64
    assert len(res.order) == len(res.gains) == 9  # round(0.15 * 60)
    assert np.all(np.diff(res.gains) <= 0)
    assert len(set(res.order.tolist())) == len(res.order)
    assert len(res.curve) == 174
    for key in ("alpha", "e_pt", "e_ifl"):  # the curve reads as a table of its three columns
        column = res.curve[key]
        assert column is getattr(res.curve, key) and column.dtype == np.float64 and column.shape == (174,)
    np.testing.assert_array_equal(res.curve["alpha"], alpha_grid())
    assert np.all(res.curve["e_pt"] > 0) and np.all(res.curve["e_ifl"] > 0)
    assert res.curve["alpha"][0] == 0.1 and res.curve.chosen == res.alpha
    for r, k in [(0.05, 3), (0.1, 6), (0.15, 9)]:
        sub = res.subsets[r]
        assert isinstance(sub, Subset)
        np.testing.assert_array_equal(sub.indices, res.order[:k])  # prefix of the one greedy order
        assert sub.weights.sum() == 60 and np.all(sub.weights >= 0)
        assert sub.e_pt > 0 and sub.e_ifl > 0
    assert res.subsets[0.05].e_pt >= res.subsets[0.15].e_pt  # more elements, smaller error
    # results are read-only: numpy refuses writes to the arrays, the dataclasses are frozen
    for array in (res.order, res.gains, res.subsets[0.05].indices, res.subsets[0.05].weights):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.alpha = 0.5
    assert not hasattr(res, "timings")  # wall-clock times are logged, never part of the result


def test_options_are_keyword_only_and_ratios_default_to_the_config():
    params = inspect.signature(select_coreset).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for name, p in params.items() if name != "features")
    assert params["ratios"].default == (0.05,)  # the config default `selection.ratios`
    with pytest.raises(TypeError):
        select_coreset(make_features(), [0.1])
    res = select_coreset(make_features(), n_jobs=1, progress=False)
    assert list(res.subsets) == [0.05] and len(res.order) == 3  # round(0.05 * 60)


def test_same_seed_same_result_and_parallel_scan():
    feats = make_features(seed=1)
    a = select_coreset(feats, ratios=[0.1], n_jobs=1, progress=False)
    b = select_coreset(feats, ratios=[0.1], n_jobs=2, progress=False)
    assert a.alpha == b.alpha
    assert a.order.tobytes() == b.order.tobytes() and a.gains.tobytes() == b.gains.tobytes()
    assert a.curve.e_ifl.tobytes() == b.curve.e_ifl.tobytes()


def test_sft_key_may_be_absent_and_manual_alpha():
    feats = make_features(kinds=("pt", "ifl"))
    res = select_coreset(feats, ratios=[0.1], alpha=0.9, progress=False)
    assert res.alpha == 0.9 and res.curve is None and res.alpha_method is None


@pytest.mark.parametrize("alpha_method", ["plateau_scaled", "golden"])
def test_other_alpha_methods(alpha_method):
    res = select_coreset(make_features(), ratios=[0.1], alpha_method=alpha_method, n_jobs=1, progress=False)
    assert res.curve.method == alpha_method and 0 < res.alpha < 1
    if alpha_method == "golden":
        total = res.curve.e_pt + res.curve.e_ifl
        assert total[res.curve.alpha == res.alpha][0] == total.min()


def test_baselines():
    feats = make_features()
    craig = select_coreset({"sft": feats["sft"]}, ratios=[0.1], method="craig", progress=False)
    assert craig.alpha is None and craig.curve is None and craig.subsets[0.1].e_pt is None
    ifl = select_coreset(feats, ratios=[0.1], method="ifl", progress=False)
    via_coef = select_coreset(feats, ratios=[0.1], coef=(0, 0, 1), progress=False)
    np.testing.assert_array_equal(ifl.order, via_coef.order)
    assert via_coef.coef == (0.0, 0.0, 1.0) and via_coef.alpha is None
    pt = select_coreset(feats, ratios=[0.1], method="pt", progress=False)
    random = select_coreset(feats, ratios=[0.1], method="random", progress=False)
    assert pt.subsets[0.1].e_pt <= random.subsets[0.1].e_pt
    r1 = select_coreset(feats, ratios=[0.05, 0.1], method="random", seed=4, progress=False)
    r2 = select_coreset(feats, ratios=[0.05, 0.1], method="random", seed=4, progress=False)
    np.testing.assert_array_equal(r1.order, r2.order)
    np.testing.assert_array_equal(r1.subsets[0.05].indices, r1.order[:3])
    assert r1.subsets[0.1].weights.sum() == pytest.approx(60)


def test_duplicate_and_identical_rows_terminate():
    feats = make_features(n=20)
    same = {k: np.repeat(v[:1], 20, axis=0) for k, v in feats.items()}
    res = select_coreset(same, ratios=[0.5], n_jobs=1, progress=False)
    assert res.subsets[0.5].weights.tolist() == [20] + [0] * 9
    dup = {k: v.copy() for k, v in feats.items()}
    for v in dup.values():
        v[5:10] = v[0]
    res = select_coreset(dup, ratios=[0.5], n_jobs=1, progress=False)
    assert res.subsets[0.5].weights.sum() == 20


def test_ratio_selecting_everything_warns_and_gives_unit_weights():
    feats = make_features(n=10)
    with pytest.warns(UserWarning, match="selects all 10") as caught:
        res = select_coreset(feats, ratios=[1.0, 0.5], n_jobs=1, progress=False)
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert sorted(res.subsets[1.0].indices.tolist()) == list(range(10))
    assert res.subsets[1.0].weights.tolist() == [1.0] * 10


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ratios=[0.0]), r"ratio 0.0 is outside \(0, 1\]"),
        (dict(ratios=[1.5]), r"outside \(0, 1\]"),
        (dict(ratios=[float("nan")]), "outside"),
        (dict(ratios=[]), "no ratios"),
        (dict(alpha=0), "strictly between 0 and 1"),
        (dict(alpha=1.0), "strictly between 0 and 1"),
        (dict(alpha=-0.2), "strictly between 0 and 1"),
        (dict(coef=(1, -1, 0)), ">= 0"),
        (dict(coef=(0, 0, 0)), "all 0"),
        (dict(coef=(1, 2)), "three numbers"),
        (dict(alpha=0.5, coef=(1, 1, 1)), "either alpha or coef"),
        (dict(method="craig", alpha=0.5), "only to method 'mint'"),
        (dict(method="less"), "unknown method"),
        (dict(alpha_method="grid"), "unknown alpha_method"),
        (dict(preheat_ratio=0), "preheat_ratio"),
        (dict(dtype="float16"), "float32 or float64"),
    ],
)
def test_bad_settings(kwargs, match):
    kwargs.setdefault("ratios", [0.1])
    with pytest.raises(MintError, match=match):
        select_coreset(make_features(n=20), progress=False, **kwargs)


def test_bad_features():
    feats = make_features(n=20)
    with pytest.raises(MintError, match="different numbers of rows"):
        select_coreset({**feats, "pt": feats["pt"][:19]}, ratios=[0.1])
    bad = feats["ifl"].copy()
    bad[[3, 17]] = np.nan
    bad[5, 2] = np.inf
    with pytest.raises(MintError, match=r"3 row\(s\) with NaN or inf values \(rows 3, 5, 17\)"):
        select_coreset({**feats, "ifl": bad}, ratios=[0.1])
    with pytest.raises(MintError, match="at least 2 examples"):
        select_coreset({k: v[:1] for k, v in feats.items()}, ratios=[0.5])
    with pytest.raises(MintError, match=r"needs feature kind\(s\) \['sft'\]"):
        select_coreset({"pt": feats["pt"], "ifl": feats["ifl"]}, ratios=[0.1], method="craig")
    with pytest.raises(MintError, match=r"\['ifl'\]"):
        select_coreset({"sft": feats["sft"], "pt": feats["pt"]}, ratios=[0.1])
    with pytest.raises(MintError, match="2-D"):
        select_coreset({"pt": feats["pt"][0], "ifl": feats["ifl"]}, ratios=[0.1])
    with pytest.raises(MintError, match="unknown feature kind"):
        select_coreset({**feats, "grad": feats["pt"]}, ratios=[0.1])


def test_memory_limit_refuses_with_the_helpful_option():
    feats = make_features(n=20)
    with pytest.raises(MintError, match=r"only 0\.0 GiB is available; use dtype float32.*--max_memory_gb"):
        select_coreset(feats, ratios=[0.1], dtype="float64", memory_limit_bytes=1000, progress=False)
    with pytest.raises(MintError, match=r"only 0\.0 GiB is available; run on a machine with more.*--max_memory_gb"):
        select_coreset(feats, ratios=[0.1], memory_limit_bytes=1000, progress=False)
    # the estimate is checked before any work, so the random baseline (no matrices) is never refused
    select_coreset(feats, ratios=[0.1], method="random", memory_limit_bytes=0, progress=False)


def test_memory_limit_none_means_no_check_and_a_limit_picks_the_distance_strategy():
    feats = make_features(n=50, seed=2)
    kw = dict(ratios=[0.1], alpha=0.8, progress=False, block=16)
    est = estimate_memory(50, 8, n_pre=15, n_kinds=2, auto=False, n_jobs=1, itemsize=4, block=16)
    assert est["peak"] < est["cached_full"]
    # no limit: never refused, and the lean path (nothing says three matrices fit); asked for: cached
    assert select_coreset(feats, **kw).settings["distance_strategy"] == "blockwise"
    assert select_coreset(feats, cache_distances=True, **kw).settings["distance_strategy"] == "cached"
    # a limit that fits three matrices in half of it: cached; one that fits only one matrix: blockwise
    roomy = select_coreset(feats, memory_limit_bytes=2 * est["cached_full"], **kw)
    tight = select_coreset(feats, memory_limit_bytes=est["peak"], **kw)
    assert roomy.settings["distance_strategy"] == "cached" and tight.settings["distance_strategy"] == "blockwise"
    assert roomy.order.tobytes() == tight.order.tobytes()
    with pytest.raises(MintError, match=r"needs about .* GiB but only"):
        select_coreset(feats, memory_limit_bytes=est["peak"] - 1, **kw)


@pytest.mark.parametrize("limit", [-1, 1.5e9, "8G", True])
def test_bad_memory_limit(limit):
    with pytest.raises(MintError, match=rf"memory_limit_bytes must be a whole number of bytes >= 0.*got {limit!r}"):
        select_coreset(make_features(n=20), ratios=[0.1], memory_limit_bytes=limit, progress=False)


@pytest.mark.parametrize("block", [16, 2048])
def test_cached_and_blockwise_distances_select_the_same(block):
    feats = make_features(n=50, seed=6)
    kw = dict(n_jobs=1, progress=False, block=block)
    a = select_coreset(feats, ratios=[0.1, 0.2], cache_distances=True, **kw)
    b = select_coreset(feats, ratios=[0.1, 0.2], cache_distances=False, **kw)
    assert a.settings["distance_strategy"] == "cached" and b.settings["distance_strategy"] == "blockwise"
    assert a.alpha == b.alpha
    assert a.order.tobytes() == b.order.tobytes() and a.gains.tobytes() == b.gains.tobytes()
    for r in (0.1, 0.2):
        np.testing.assert_array_equal(a.subsets[r].weights, b.subsets[r].weights)
        assert a.subsets[r].e_pt == pytest.approx(b.subsets[r].e_pt, rel=1e-5)
        assert a.subsets[r].e_ifl == pytest.approx(b.subsets[r].e_ifl, rel=1e-5)
