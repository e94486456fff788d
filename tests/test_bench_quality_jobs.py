"""The evidence benchmark's job list (bench/quality.py `jobs`): which arms train with which seeds."""
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _subsets():
    out = []
    for ratio in (0.05, 0.1):
        for label in ("mint/plateau", "mint/plateau_scaled", "mint/golden", "craig", "craig/unweighted", "pt", "ifl"):
            out.append({"label": label, "ratio": ratio, "indices": [0, 1], "weights": [1.0, 2.0]})
        for s in range(2):
            out.append({"label": "random", "ratio": ratio, "indices": [s, 3], "weights": [1.0, 1.0], "seed": s})
    out.append({"label": "mint/plateau/proj8192", "ratio": 0.1, "indices": [0, 2], "weights": [1.0, 2.0]})
    return out


def _seeds(todo, label, ratio):
    return sorted(j["seed"] for j in todo if j["label"] == label and j["ratio"] == ratio)


def test_more_seeds_trains_the_named_arm_with_the_default_rules_seeds(quality):
    base = ["--random_seeds", "0", "1", "--mint_train_seeds", "0", "1", "2"]
    plain = quality.jobs(quality.parse(base), _subsets(), 40)
    assert _seeds(plain, "mint/plateau", 0.05) == [0, 1, 2] and _seeds(plain, "mint/golden", 0.05) == [0]
    more = quality.jobs(quality.parse(base + ["--more_seeds", "mint/golden@0.05", "craig/unweighted"]), _subsets(), 40)
    assert _seeds(more, "mint/golden", 0.05) == [0, 1, 2] and _seeds(more, "mint/golden", 0.1) == [0]
    assert _seeds(more, "craig/unweighted", 0.05) == _seeds(more, "craig/unweighted", 0.1) == [0, 1, 2]
    assert {j["weighting"] for j in more if j["label"] == "craig/unweighted"} == {"none"}
    assert {j["weighting"] for j in more if j["label"] == "mint/golden"} == {"loss"}
    # the runs already stored keep their keys: seed 0 of golden is the same job with or without the option
    key = {j["key"] for j in plain if j["label"] == "mint/golden" and j["ratio"] == 0.05}
    assert key <= {j["key"] for j in more} and len({j["key"] for j in more}) == len(more)
    assert len(more) == len(plain) + 6


def test_more_seeds_names_must_be_selected_arms(quality):
    todo = quality.jobs(quality.parse(["--random_seeds", "0", "1"]), _subsets(), 40)
    bad, ok = quality.check_more_seeds(["mint/golden@0.05", "random", "full", "pt@0.3", "mint/plateau/weighting-none",
                                        "mint/plateau/proj8192@0.1"], todo)
    assert bad == ["full", "mint/plateau/weighting-none", "pt@0.3", "random"]
    assert "mint/golden" in ok and "random" not in ok and "full" not in ok


def test_analyse_compares_other_mint_arms_with_the_default_rule(quality):
    import numpy as np

    rng = np.random.default_rng(0)
    m = 60
    tasks = [f"t{i % 6}" for i in range(m)]

    def run(label, seed, shift):
        return {"label": label, "ratio": 0.1, "seed": seed, "k": 5, "sft": list(2.0 + shift + 0.1 * rng.random(m)),
                "exact_match": [None] * m}

    runs = [run("random", s, 0.0) for s in range(3)] + [run("mint/plateau", s, 0.05) for s in range(2)]
    runs += [run("mint/golden", 0, -0.05), run("craig", 0, 0.0)]
    base = {"sft": [3.0] * m, "tokens": list(rng.integers(1, 20, size=m))}
    rows = quality.analyse(runs, base, tasks, n_boot=200, seed=0, rule="mint/plateau")["rows"]
    want = np.mean(runs[5]["sft"]) - np.mean([runs[3]["sft"], runs[4]["sft"]], axis=0).mean()
    got = rows["mint/golden@0.1"]["vs_rule"]
    assert got["label"] == "mint/plateau" and got["runs"] == 2
    assert got["delta_mean"]["value"] == pytest.approx(want)
    assert got["delta_mean"]["lo"] <= want <= got["delta_mean"]["hi"] and got["delta_mean"]["hi"] < 0
    assert "vs_rule" not in rows["mint/plateau@0.1"] and "vs_rule" not in rows["craig@0.1"]
    assert "vs_rule" not in quality.analyse(runs, base, tasks, n_boot=50, seed=0)["rows"]["mint/golden@0.1"]
    text = quality.markdown({"analysis": quality.analyse(runs, base, tasks, n_boot=50, seed=0, rule="mint/plateau")})
    assert "Against the default rule (mint/plateau" in text and "| 0.1 | mint/golden | 1 | 2 |" in text
