"""The training-loss curve of a run's manifest (the Trainer's log history, else mint's history)."""
from __future__ import annotations

import numpy as np

from mint.pipeline.plots import loss_curve, training_loss_png


def test_loss_curve_from_the_log_history_in_epochs():
    manifest = {"n_steps": 4, "config": {"epochs": 2.0},
                "log_history": [{"loss": 3.0, "step": 1, "epoch": 0.25}, {"loss": 2.5, "step": 2},
                                {"loss": 2.0, "step": 3}, {"loss": 1.5, "step": 4},
                                {"train_runtime": 1.0, "step": 4}],  # the summary entry has no loss
                "history": [{"step": 1, "loss": 9.0}]}
    x, y = loss_curve(manifest)
    assert x.tolist() == [0.5, 1.0, 1.5, 2.0] and y.tolist() == [3.0, 2.5, 2.0, 1.5]
    old = {"n_steps": 2, "config": {"epochs": 1.0}, "history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]}
    assert [v.tolist() for v in loss_curve(old)] == [[0.5, 1.0], [2.0, 1.0]]
    png = training_loss_png({"coreset": (x, y), "random": (np.array([1.0]), np.array([2.0]))})
    assert png[:4] == b"\x89PNG" and png == training_loss_png({"coreset": (x, y), "random": (np.array([1.0]),
                                                                                               np.array([2.0]))})
