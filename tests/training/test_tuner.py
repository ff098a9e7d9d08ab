"""FineTuner end to end on a tiny model: behaviour, not just that code runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images

from finetunekit import FineTuner
from finetunekit.callbacks import EarlyStopping, History, LambdaCallback
from finetunekit.errors import CheckpointError, ConfigError, FineTuneKitError
from finetunekit.strategies import DiscriminativeLR, FrozenBackbone, FullFineTune, GradualUnfreeze


def tuner(strategy=None, seed=0, **kw):
    torch.manual_seed(seed)
    return FineTuner(
        TinyNet(), num_classes=3, image_size=16, seed=seed, strategy=strategy, device="cpu", **kw
    )


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_groups_are_ordered_and_cover_every_parameter():
    ft = tuner()
    names = [g.name for g in ft.groups]
    assert names[-1] == "head"
    assert ft.groups[-1].param_names == ("fc.weight", "fc.bias")
    assert sum(g.num_params for g in ft.groups) == sum(p.numel() for p in ft.model.parameters())
    assert ft.model.fc.out_features == 3


def test_frozen_backbone_stays_bitwise_equal_and_head_moves(images):
    x, y = images
    ft = tuner(FrozenBackbone())
    before = snapshot(ft.model)
    ft.fit(x, y, epochs=2, batch_size=16, verbose=0)
    after = snapshot(ft.model)
    for k in before:
        if k.startswith("fc."):
            assert not torch.equal(before[k], after[k]), k
        else:  # weights AND BatchNorm running statistics of frozen groups
            assert torch.equal(before[k], after[k]), k


def test_full_fine_tune_moves_backbone_and_bn_stats(images):
    x, y = images
    ft = tuner(FullFineTune())
    before = snapshot(ft.model)
    ft.fit(x, y, epochs=1, batch_size=16, verbose=0)
    after = snapshot(ft.model)
    assert not torch.equal(before["stem.0.weight"], after["stem.0.weight"])
    assert not torch.equal(before["stem.1.running_mean"], after["stem.1.running_mean"])


def test_train_bn_true_lets_frozen_bn_statistics_move(images):
    x, y = images
    ft = tuner(FrozenBackbone(train_bn=True))
    before = snapshot(ft.model)
    ft.fit(x, y, epochs=1, batch_size=16, verbose=0)
    after = snapshot(ft.model)
    assert torch.equal(before["stem.0.weight"], after["stem.0.weight"])
    assert not torch.equal(before["stem.1.running_mean"], after["stem.1.running_mean"])


def test_fit_on_separable_data_reaches_high_accuracy(images):
    x, y = images
    ft = tuner()
    ft.compile(lr=1e-2)
    history = ft.fit(x, y, epochs=6, batch_size=16, verbose=0, augment=False)
    assert history.history["accuracy"][-1] > 0.9
    x_test, y_test = make_images(60, seed=1)
    assert ft.evaluate(x_test, y_test)["accuracy"] > 0.9


def test_history_is_keras_like(images):
    x, y = images
    ft = tuner()
    h = ft.fit(x, y, epochs=3, batch_size=32, verbose=0, validation_split=0.25, initial_epoch=1)
    assert isinstance(h, History)
    assert h.epoch == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(h.history)
    assert all(type(v) is float for vs in h.history.values() for v in vs)


def test_evaluate_and_predict_shapes_and_types(images):
    x, y = images
    ft = tuner()
    result = ft.evaluate(x, y)
    assert set(result) == {"loss", "accuracy"} and all(type(v) is float for v in result.values())
    probs = ft.predict(x[:7])
    assert probs.shape == (7, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_predict_matches_model_output_in_order(images):
    x, _ = images
    ft = tuner()
    a = ft.predict(x[:10], batch_size=3)
    b = ft.predict(x[:10], batch_size=10)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_save_load_round_trip_gives_identical_predictions(images, tmp_path):
    x, y = images
    ft = tuner(class_names=["r", "g", "b"])
    ft.fit(x, y, epochs=1, batch_size=16, verbose=0)
    ft.save(tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["num_classes"] == 3 and config["class_names"] == ["r", "g", "b"]
    assert config["data_config"]["input_size"] == [3, 16, 16]
    ft2 = FineTuner.load(tmp_path / "run", model=TinyNet(), device="cpu")
    assert np.array_equal(ft.predict(x), ft2.predict(x))
    assert ft2.class_names == ["r", "g", "b"]


def test_load_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        FineTuner.load(tmp_path / "nothing")


def test_optimizer_has_every_group_from_the_start_and_keeps_it(images):
    x, y = images
    ft = tuner(GradualUnfreeze(every=1))
    ft.compile()
    count = len(ft.optimizer.param_groups)
    names = {pg["name"] for pg in ft.optimizer.param_groups}
    assert {"stem", "stem/no_decay", "stage1", "head", "head/no_decay"} <= names
    seen = []
    ft.fit(
        x,
        y,
        epochs=3,
        batch_size=32,
        verbose=0,
        callbacks=[LambdaCallback(on_epoch_end=lambda e, logs: seen.append(len(ft.optimizer.param_groups)))],
    )
    assert seen == [count] * 3


def test_no_weight_decay_on_biases_and_norms():
    ft = tuner()
    ft.compile(weight_decay=0.05)
    for pg in ft.optimizer.param_groups:
        for p in pg["params"]:
            assert pg["weight_decay"] == (0.0 if p.ndim <= 1 else 0.05)


def test_discriminative_lr_ratios_exact_at_every_step(images):
    x, y = images
    ft = tuner(DiscriminativeLR(0.5))
    ft.compile(schedule="one_cycle")
    ratios = []

    def record(batch, logs):
        lrs = {pg["name"]: pg["lr"] for pg in ft.optimizer.param_groups}
        ratios.append((lrs["stem"] / lrs["head"], lrs["stage1"] / lrs["head"]))

    ft.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[LambdaCallback(on_train_batch_end=record)])
    assert len(ratios) == 16
    assert all(r == (0.25, 0.5) for r in ratios)


def test_gradual_unfreeze_trainability_per_epoch(images):
    x, y = images
    ft = tuner(GradualUnfreeze(every=1))
    seen = []
    cb = LambdaCallback(
        on_epoch_begin=lambda e, logs: seen.append(
            [
                all(p.requires_grad for p in ft.model.get_submodule(m).parameters())
                for m in ("stem", "stage1", "fc")
            ]
        )
    )
    ft.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[cb])
    assert seen == [[False, False, True], [False, True, True], [True, True, True]]


def test_early_stopping_stops_training(images):
    x, y = images
    ft = tuner()
    ft.compile(lr=1e-9, schedule="constant")  # nothing improves
    h = ft.fit(
        x,
        y,
        epochs=20,
        batch_size=32,
        verbose=0,
        validation_split=0.2,
        callbacks=[EarlyStopping(monitor="val_loss", patience=1, min_delta=1.0)],
    )
    assert len(h.epoch) == 2


def test_same_seed_gives_bitwise_equal_weights(images):
    x, y = images
    a, b = tuner(seed=7), tuner(seed=7)
    for ft in (a, b):
        ft.fit(x, y, epochs=2, batch_size=16, verbose=0, validation_split=0.2)
    sa, sb = snapshot(a.model), snapshot(b.model)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_summary_shows_plan_per_group_and_epoch():
    ft = tuner(GradualUnfreeze(every=1))
    ft.compile(lr=1e-3)
    text = ft.summary()
    assert "stem" in text and "head" in text and "frozen" in text and "ep2" in text
    assert "frozen groups run BN in eval mode" in text


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda ft, x, y: ft.compile(lr=0), "lr=0"),
        (lambda ft, x, y: ft.compile(lr=-1e-3), "lr=-0.001"),
        (lambda ft, x, y: ft.compile(optimizer="adamax9"), "adamax9"),
        (lambda ft, x, y: ft.compile(schedule="warp"), "warp"),
        (lambda ft, x, y: ft.compile(metrics=["f7"]), "f7"),
        (lambda ft, x, y: ft.compile(loss="hinge2"), "hinge2"),
        (lambda ft, x, y: ft.fit(x, y, epochs=0), "epochs=0"),
        (lambda ft, x, y: ft.fit(x, y, batch_size=0), "batch_size=0"),
        (lambda ft, x, y: ft.fit(x, y, validation_split=1.5), "validation_split=1.5"),
        (lambda ft, x, y: ft.fit(x, y, epochs=2, initial_epoch=2), "initial_epoch=2"),
        (lambda ft, x, y: ft.fit(x, y, verbose=3), "verbose=3"),
    ],
)
def test_bad_arguments_raise_before_any_step(images, call, match):
    x, y = images
    ft = tuner()
    before = snapshot(ft.model)
    with pytest.raises(FineTuneKitError, match=match):
        call(ft, x, y)
    after = snapshot(ft.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_constructor_arguments():
    with pytest.raises(ConfigError, match="num_classes=0"):
        FineTuner(TinyNet(), num_classes=0, device="cpu")
    with pytest.raises(ConfigError, match="device='tpu9'"):
        FineTuner(TinyNet(), num_classes=3, device="tpu9")


def test_new_head_is_small_so_initial_loss_is_near_log_num_classes(images):
    x, y = images
    ft = tuner()
    assert torch.count_nonzero(ft.model.fc.bias) == 0
    assert 0 < ft.model.fc.weight.std() <= 0.011
    assert abs(ft.evaluate(x, y)["loss"] - np.log(3)) < 0.05


def test_help_describes_the_facade_without_pointing_outside_the_repository() -> None:
    import pydoc

    text = pydoc.render_doc(FineTuner)
    assert "DESIGN" not in text
    assert "Event order" in text and "restore" in text  # fit's docstring: the event order as pseudocode
