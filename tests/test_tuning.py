"""keras-tuner support: search spaces, the cost-aware score and a 2-trial search."""

import keras
import keras_tuner as kt
import numpy as np
import pytest

import keras_implicit as ki
from keras_implicit import tuning
from keras_implicit.datasets import load_digits


@pytest.mark.parametrize("family", tuning.FAMILIES)
def test_search_space_builds_each_family(family):
    hp = kt.HyperParameters()
    shape = (8, 8, 1) if family == "mondeq_conv" else (64,)
    model = tuning.EquilibriumHyperModel(family, shape, 10).build(hp)
    assert model.output_shape == (None, 10)
    names = set(hp.values)
    assert {"solver", "tol", "max_iter", "backward", "learning_rate"} <= names
    assert ("alpha" in names) == (family in ("mondeq", "mondeq_conv", "lben", "opteq"))
    assert ("max_norm" in names) == (family in ("opteq", "geq"))
    assert ("m" in names) == (family in ("mondeq", "mondeq_conv"))
    assert ("gamma" in names) == (family == "lben")
    layer = model.get_layer("deq")
    assert layer.tol == hp.values["tol"] and layer.max_iter == hp.values["max_iter"]
    if family == "lben":
        assert layer.lipschitz == hp.values["gamma"]


def test_add_solver_hyperparameters_rejects_unknown_family():
    with pytest.raises(ValueError, match="Received: family='resnet'"):
        tuning.add_solver_hyperparameters(kt.HyperParameters(), "resnet")


def test_cost_aware_score_is_accuracy_minus_weighted_iterations():
    cb = tuning.CostAwareScore(cost_weight=0.01)
    cb.on_epoch_begin(0)
    logs = {"val_accuracy": 0.9, "val_a_fwd_iters": 10.0, "val_b_fwd_iters": 5.0, "a_fwd_iters": 99.0}
    cb.on_epoch_end(0, logs)
    assert logs["val_cost"] == 15.0 and logs["val_score"] == pytest.approx(0.9 - 0.15)
    with pytest.raises(ValueError, match="val_<layer>_fwd_iters"):
        cb.on_epoch_end(0, {"val_accuracy": 0.5})
    with pytest.raises(ValueError, match="Received: cost='flops'"):
        tuning.CostAwareScore(cost="flops")


def test_two_trial_search_finds_a_scored_best_model(tmp_path):
    keras.utils.set_random_seed(0)
    (x, y), (xv, yv) = load_digits()
    tuner = kt.RandomSearch(ki.tuning.EquilibriumHyperModel("mondeq", (64,), 10), objective=ki.tuning.OBJECTIVE,
                            max_trials=2, seed=0, directory=str(tmp_path), project_name="t")
    tuner.search(x[:512], y[:512], validation_data=(xv[:128], yv[:128]), epochs=2, batch_size=64, verbose=0)
    trials = [t for t in tuner.oracle.trials.values() if t.score is not None]
    assert len(trials) == 2
    for trial in trials:
        acc = trial.metrics.get_best_value("val_accuracy")
        cost = trial.metrics.get_last_value("val_cost")
        assert cost >= 1  # forward iterations were measured
        assert trial.score <= acc  # the score pays for the iterations
    best = tuner.get_best_models(1)[0]
    assert best.predict(xv[:4], verbose=0).shape == (4, 10)
    scores = sorted(t.score for t in trials)
    assert tuner.oracle.get_best_trials(1)[0].score == scores[-1]
