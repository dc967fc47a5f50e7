"""InceptionV3's auxiliary loss (the paper's recipe): training loss = CE(main) + w * CE(aux) against a NumPy oracle,
w = 0 is the plain loss, the saved model.keras is the one-output classifier, exact resume with the auxiliary head,
and the auxiliary head's convolutions loaded from a torchvision state dict."""

import keras
import numpy as np
import pytest

from tests.seeded_training import KillAtEpoch, SeededBatches
from tfflannel.errors import InputError
from tfflannel.learners.train import save_classifier
from tfflannel.models.classifier import AuxiliaryLossModel, build_classifier, inference_model
from tfflannel.resume import ResumableFit

X = np.random.default_rng(7).normal(size=(6, 8)).astype("float32")
Y = np.array([0, 1, 2, 3, 0, 2])


def _aux_model(weight, dropout=0.0):
    """A tiny classifier whose trunk also feeds an auxiliary softmax head, compiled as train.py compiles learners."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    trunk = keras.layers.Dense(16, activation="relu", name="trunk")(inputs)
    if dropout:
        trunk = keras.layers.Dropout(dropout, name="drop")(trunk)
    probs = keras.layers.Activation("softmax", name="probabilities")(keras.layers.Dense(4, name="head_logits")(trunk))
    aux = keras.layers.Activation("softmax", name="aux_probabilities")(keras.layers.Dense(4, name="aux_logits")(trunk))
    model = AuxiliaryLossModel(keras.Model(inputs, probs, name="tiny_classifier"), aux, weight)
    model.compile(optimizer=keras.optimizers.AdamW(0.01), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    return model


def _cross_entropy(probs, labels):
    return float(-np.mean(np.log(probs[np.arange(len(labels)), labels])))


@pytest.mark.parametrize("weight", [0.4, 0.0])
def test_training_loss_is_main_ce_plus_weighted_aux_ce(weight):
    model = _aux_model(weight)
    probs, aux = (np.asarray(t) for t in model.network(X, training=True))
    oracle = _cross_entropy(probs, Y) + weight * _cross_entropy(aux, Y)
    assert abs(_cross_entropy(aux, Y) - _cross_entropy(probs, Y)) > 0.05      # the two heads really differ
    logs = model.train_on_batch(X, Y, return_dict=True)                       # loss of the forward pass before the step
    np.testing.assert_allclose(logs["loss"], oracle, rtol=1e-5)
    assert logs["accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == Y))  # metrics on the main output
    # Eval mode, as torchvision: only the main output, the classifier's.
    np.testing.assert_allclose(model.predict(X, verbose=0), np.asarray(inference_model(model)(X)), atol=1e-6)


def _batch(rng):
    x = rng.normal(size=(6, 8)).astype("float32")
    return x, (x[:, :4].argmax(axis=1))


def _run(run_dir, kill=False):
    fit = ResumableFit(run_dir, 3, {"aux_loss_weight": 0.4}, seed=0, save_model=save_classifier)
    model = _aux_model(0.4, dropout=0.3)
    fit.fit(model, SeededBatches(_batch, 2, fit.initial_epoch), callbacks=[KillAtEpoch(1)] if kill else [])
    return model


def test_saved_model_has_one_output_and_a_killed_run_resumes_exactly(tmp_path):
    whole = _run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "killed", kill=True)
    resumed = _run(tmp_path / "killed")
    for a, b in zip(whole.get_weights(), resumed.get_weights(), strict=True):      # aux head and optimizer included
        np.testing.assert_array_equal(a, b)
    assert len(whole.network.get_weights()) == len(inference_model(whole).get_weights()) + 2   # aux Dense
    saved = keras.saving.load_model(tmp_path / "killed" / "model.keras", compile=False)
    assert len(saved.outputs) == 1 and saved.output.shape == (None, 4)
    assert "aux_logits" not in [layer.name for layer in saved.layers]
    np.testing.assert_allclose(saved.predict(X, verbose=0), resumed.predict(X, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_inception_v3_tv_aux_head_loads_from_a_state_dict_and_needs_299(tmp_path):
    from tfflannel.models.state_dicts import seeded_state_dict, write_safetensors
    from tfflannel.models.weights_import import import_weights

    pytest.importorskip("safetensors")
    with pytest.raises(InputError, match="needs a 299 px input.*aux_loss_weight: 0"):
        build_classifier("inception_v3_tv", 160, aux_loss_weight=0.4)
    assert not isinstance(build_classifier("inception_v3_tv", 160, aux_loss_weight=0.0), AuxiliaryLossModel)
    from tests.learners_stage.test_weights_import import load_fixture

    _, _, names_shapes, seed = load_fixture("inception_v3_tv")            # torchvision's names, AuxLogits included
    state = seeded_state_dict(names_shapes, seed)
    source = tmp_path / "inception.safetensors"
    write_safetensors(state, source)
    model = build_classifier("inception_v3_tv", 299, weights=source, aux_loss_weight=0.4)
    assert isinstance(model, AuxiliaryLossModel) and model.aux_loss_weight == 0.4
    conv1 = model.network.get_layer("inception_v3_tv_AuxLogits_conv1_conv").get_weights()[0]
    np.testing.assert_array_equal(conv1, state["AuxLogits.conv1.conv.weight"].transpose(2, 3, 1, 0))
    assert model.network.get_layer("head_aux_logits").get_weights()[0].shape == (768, 4)   # AuxLogits.fc replaced
    classifier = inference_model(model)
    assert len(classifier.outputs) == 1 and "head_aux_logits" not in [layer.name for layer in classifier.layers]
    # An import-weights file has no auxiliary head: the backbone loads, the aux convolutions keep their init.
    imported = tmp_path / "inception.weights.h5"
    import_weights("inception_v3_tv", source, imported)
    model = build_classifier("inception_v3_tv", 299, weights=imported, aux_loss_weight=0.4)
    mixed = model.network.get_layer("inception_v3_tv_Mixed_7c_branch1x1_conv").get_weights()[0]
    np.testing.assert_array_equal(mixed, state["Mixed_7c.branch1x1.conv.weight"].transpose(2, 3, 1, 0))
    assert not np.array_equal(model.network.get_layer("inception_v3_tv_AuxLogits_conv1_conv").get_weights()[0],
                              conv1)
