"""`training.compare_seeds`: the goals are held to the worst seed, and votes are compared at
the forwards BT decoding spent (the majority of 5 in these figures costs more: not the one)."""

from __future__ import annotations

from training import compare_seeds
from training.compare_seeds import BT, PLAIN, SUPPRESSED


def figures(bt: float, suppressed: float, plain: float, vote: float, false_bt: float = 0.0):
    rows = [
        {"name": BT, "accuracy": bt, "forwards_per_answer": 13.0, "backtracks_per_answer": 4.0},
        {"name": SUPPRESSED, "accuracy": suppressed, "forwards_per_answer": 5.0},
        {"name": PLAIN, "accuracy": plain, "forwards_per_answer": 5.0},
    ]
    for n, accuracy in ((3, vote), (5, 0.99)):
        rows.append({"name": f"plain SFT, majority of {n} samples", "accuracy": accuracy,
                     "forwards_per_answer": 5.0 * n})  # fmt: skip
        rows.append({"name": f"plain SFT, best of {n} samples (oracle, needs a verifier)",
                     "accuracy": 0.9, "forwards_per_answer": 5.0 * n})  # fmt: skip
    return {"rows": rows, "false_backtrack_rate": false_bt, "votes_matching_bt_forwards": 3}


def test_every_goal_holds_only_if_it_holds_for_the_worst_seed():
    good = figures(0.9, 0.33, 0.34, 0.35)
    assert all(compare_seeds.goals({0: good, 1: good}).values())
    narrow = figures(0.42, 0.33, 0.34, 0.35)  # 8 points above plain: one seed misses
    met = compare_seeds.goals({0: good, 1: narrow})
    assert list(met.values()) == [False, True, True]
    noisy = figures(0.9, 0.33, 0.34, 0.35, false_bt=0.02)
    assert list(compare_seeds.goals({0: good, 1: noisy}).values()) == [True, False, True]


def test_the_vote_baseline_is_the_one_at_bt_decodings_forwards():
    assert compare_seeds.best_vote(figures(0.9, 0.3, 0.3, 0.35))["accuracy"] == 0.35
    beaten = figures(0.5, 0.3, 0.3, 0.6)  # majority of 3: 15 forwards, BT's 13 matched
    assert compare_seeds.best_vote(beaten)["name"] == "plain SFT, majority of 3 samples"
    assert not list(compare_seeds.goals({0: beaten}).values())[2]
    table = compare_seeds.markdown({0: figures(0.9, 0.33, 0.34, 0.35)})
    assert "| 0 | 90.0% (13.00) | 33.0% (5.00) | 34.0% (5.00) | majority of 3 samples" in table
    assert "at equal forwards: yes" in table
