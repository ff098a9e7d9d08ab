"""LoRA as a strategy (peft): what trains, composition with plans, merged and adapter-only saves,
L2-SP / WiSE-FT on the merged weights, the feature cache, exact resume, errors."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch
from helpers import TinyNet, make_images
from safetensors.torch import load_file

from finetunekit import L2SP, FineTuner
from finetunekit.callbacks import BackupAndRestore, LambdaCallback, ModelCheckpoint
from finetunekit.errors import CheckpointError, ConfigError, MissingDependencyError
from finetunekit.strategies import DiscriminativeLR, GradualUnfreeze, LoRA
from finetunekit.strategies.lora import merged_state_dict

pytest.importorskip("peft")
timm = pytest.importorskip("timm")

X, Y = make_images(32, 3, 16, seed=2)
RANK = 2


def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3
    )


def tuner(strategy=None, seed: int = 0) -> FineTuner:
    strategy = strategy if strategy is not None else LoRA(rank=RANK, alpha=4)
    return FineTuner(vit(), 3, device="cpu", image_size=16, seed=seed, strategy=strategy)


def fit(ft: FineTuner, epochs: int = 2, **kw) -> FineTuner:
    ft.compile(lr=0.02).fit(X, Y, batch_size=8, epochs=epochs, verbose=0, augment=False, **kw)
    return ft


def test_default_targets_are_the_vit_projections_and_only_adapters_and_head_train():
    ft = tuner()
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    fit(ft)
    after = ft.model.state_dict()
    adapters = {n for n, _ in ft.model.named_parameters() if ".lora_" in n}
    targets = {n.split(".lora_")[0] for n in adapters}
    layers = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    assert targets == {f"blocks.{b}.{m}" for b in (0, 1) for m in layers}
    changed = {n for n, _ in ft.model.named_parameters() if not torch.equal(before[n], after[n])}
    assert changed == adapters | {"head.weight", "head.bias"}
    # rank x (in + out) per adapted layer: qkv 16->48, proj 16->16, fc1 16->64, fc2 64->16
    per_block = RANK * ((16 + 48) + (16 + 16) + (16 + 64) + (64 + 16))
    assert sum(ft.model.get_parameter(n).numel() for n in adapters) == 2 * per_block
    assert ft.plan(0)[0] is None  # the stem has no adapter: frozen, so the feature cache may cut above it


def test_adapters_follow_their_groups_plan_and_lr_scale():
    ft = tuner([LoRA(rank=RANK), GradualUnfreeze(every=1)])
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    fit(ft, epochs=1)  # epoch 0 opens the head only
    assert all(torch.equal(before[n], p) for n, p in ft.model.named_parameters() if ".lora_" in n)
    groups = {g.name: g.param_names for g in ft.groups}
    assert "blocks.1.attn.qkv.lora_A.default.weight" in groups["blocks.1"]
    ft = tuner([LoRA(rank=RANK), DiscriminativeLR(0.5)]).compile(lr=1.0)
    ft._apply_plan(0)
    from finetunekit.strategies.apply import write_lrs

    write_lrs(ft.optimizer, 1.0, 1.0, ft.plan(0))
    lrs = {pg["name"]: pg["lr"] for pg in ft.optimizer.param_groups}
    assert lrs["blocks.0"] == 0.25 and lrs["blocks.1"] == 0.5 and lrs["head"] == 1.0
    assert "trains" in ft.summary()


def test_merged_save_loads_into_a_plain_timm_model_with_the_same_predictions(tmp_path: Path):
    ft = fit(tuner())
    ft.save(tmp_path / "merged")
    state = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in state)
    plain = vit()
    plain.load_state_dict(state, strict=True)
    plain.eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        expected = ft.model.eval()(x)
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
    loaded = FineTuner.load(tmp_path / "merged", model=vit(), device="cpu")
    assert not any(".lora_" in n for n, _ in loaded.model.named_parameters())
    assert (loaded.predict(X).argmax(1) == ft.predict(X).argmax(1)).all()


def test_adapters_only_save_round_trips_into_a_fresh_lora_tuner(tmp_path: Path):
    ft = fit(tuner())
    ft.save(tmp_path / "adapters", adapters_only=True)
    state = load_file(str(tmp_path / "adapters" / "model.safetensors"))
    assert set(state) == {k for k in ft.model.state_dict() if ".lora_" in k or k.startswith("head.")}
    fresh = tuner(seed=1).load_adapters(tmp_path / "adapters")
    assert torch.equal(torch.from_numpy(fresh.predict(X)), torch.from_numpy(ft.predict(X)))
    with pytest.raises(CheckpointError, match="holds LoRA adapters only"):
        FineTuner.load(tmp_path / "adapters", model=vit())
    with pytest.raises(CheckpointError, match="do not fit this model"):
        tuner(LoRA(rank=RANK + 1)).load_adapters(tmp_path / "adapters")
    with pytest.raises(ConfigError, match="has no LoRA adapters"):
        FineTuner(vit(), 3, device="cpu", image_size=16).save(tmp_path / "x", adapters_only=True)


def test_l2sp_penalizes_the_merged_change():
    ft = tuner()
    ft.compile(regularizer=L2SP(alpha=0.5, beta=0.0))
    reg = ft._compiled.regularizer.bind(ft)
    assert float(reg().detach()) == 0.0  # B starts at zero: the merged model is the pretrained one
    with torch.no_grad():
        for n, p in ft.model.named_parameters():
            if ".lora_B" in n:
                p.normal_()
    expected = 0.0
    for module in ft.model.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            expected += 0.25 * float(((b @ a) * module.scaling["default"]).pow(2).sum())
    assert float(reg().detach()) == pytest.approx(expected, rel=1e-5)


def test_wise_interpolates_the_merged_change():
    ft = tuner()
    start = {k: v.clone() for k, v in merged_state_dict(ft.model).items()}
    fit(ft)
    end = {k: v.clone() for k, v in merged_state_dict(ft.model).items()}
    ft.interpolate(0.5)
    half = merged_state_dict(ft.model)
    key = "blocks.0.attn.qkv.weight"
    torch.testing.assert_close(half[key], (start[key] + end[key]) / 2, rtol=1e-5, atol=1e-6)
    ft.interpolate(0.0)
    torch.testing.assert_close(merged_state_dict(ft.model)[key], start[key], rtol=0, atol=1e-7)
    ft.interpolate(1.0)
    assert all(torch.equal(merged_state_dict(ft.model)[k], v) for k, v in end.items())


def test_feature_cache_cuts_below_the_first_adapted_block_and_matches_uncached():
    strategy = [LoRA(rank=RANK), GradualUnfreeze(milestones={0: 2})]  # blocks.1 adapters + head
    cached = fit(tuner(strategy), epochs=3)
    plain = fit(tuner(strategy), epochs=3, cache_features=False)
    status = cached.summary().rsplit("feature cache: ", 1)[1]
    assert status.startswith("on in epochs 0-2: the layers after 'blocks.0' trained on its cached outputs")
    for (n, a), b in zip(cached.model.named_parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)


class Crash(Exception):
    pass


def test_resume_is_bitwise(tmp_path: Path):
    def run(crash: bool):
        ft = tuner([LoRA(rank=RANK), GradualUnfreeze(every=1)])
        cbs = [BackupAndRestore(tmp_path / "backup", save_freq=2)]
        if crash:

            def stop(batch: int, logs: dict) -> None:
                if ft._trainer.epoch == 1 and batch == 2:
                    raise Crash

            cbs.append(LambdaCallback(on_train_batch_end=stop))
        try:
            ft.compile(lr=0.02).fit(X, Y, batch_size=8, epochs=3, verbose=0, callbacks=cbs)
        except Crash:
            return None
        return ft.model.state_dict()

    assert run(crash=True) is None
    resumed = run(crash=False)
    (tmp_path / "backup").rename(tmp_path / "used")
    straight = run(crash=False)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_torchvision_vit_targets_attention_and_mlp(tmp_path: Path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=3)  # fmt: skip
    ft = FineTuner(net, 3, device="cpu", image_size=16, head="heads.head", strategy=LoRA(rank=RANK))
    names = {n.split(".lora_")[0] for n, _ in ft.model.named_parameters() if ".lora_" in n}
    layer = "encoder.layers.encoder_layer_0"
    assert {f"{layer}.self_attention", f"{layer}.mlp.0", f"{layer}.mlp.3"} <= names
    fit(ft, epochs=1)
    x = torch.randn(4, 3, 16, 16)
    merged = merged_state_dict(ft.model)
    plain = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3)  # fmt: skip
    plain.load_state_dict(merged, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), ft.model.eval()(x), rtol=1e-5, atol=1e-5)


def test_cnn_defaults_to_its_convolutions():
    ft = FineTuner(TinyNet(num_classes=3), 3, device="cpu", image_size=16, strategy=LoRA(rank=RANK))
    names = {n.split(".lora_")[0] for n, _ in ft.model.named_parameters() if ".lora_" in n}
    assert names == {"stem.0", "stage1.0"}


def test_bad_arguments_name_the_value(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ConfigError, match="rank=0"):
        LoRA(rank=0)
    with pytest.raises(ConfigError, match="'nothing.here' matches no"):
        tuner(LoRA(targets=["nothing.here"]))
    with pytest.raises(ConfigError, match="matches the head"):
        tuner(LoRA(targets=["head"]))
    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name.startswith("peft"):
            raise ImportError("no peft")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(MissingDependencyError, match=r"pip install finetunekit\[lora\]"):
        tuner()


def test_learning_curve_copies_restart_from_the_pretrained_adapters():
    from finetunekit.tools.learning_curve import fresh_copy

    ft = tuner()
    start = {k: v.clone() for k, v in ft.model.state_dict().items() if ".lora_" in k}
    fit(ft)
    fresh = fresh_copy(ft, seed=0)
    state = fresh.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in start.items())  # A as initialized, B zero again
    assert any(not torch.equal(ft.model.state_dict()[k], v) for k, v in start.items())
    assert all(p.requires_grad for n, p in fresh.model.named_parameters() if ".lora_" in n)


def test_model_checkpoint_writes_the_merged_weights_that_save_writes(tmp_path: Path):
    """ModelCheckpoint's folder and .safetensors file hold what ft.save holds (merged, plain names), so
    FineTuner.load and a plain timm model read them."""
    folder = ModelCheckpoint(tmp_path / "ckpt-{epoch}", save_weights_only=True)
    file = ModelCheckpoint(tmp_path / "w-{epoch}.safetensors", save_weights_only=True)
    ft = fit(tuner(), callbacks=[folder, file])
    ft.save(tmp_path / "saved")
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    weights = load_file(str(tmp_path / "w-2.safetensors"))
    assert weights.keys() == saved.keys() and not any("lora" in k or "base_layer" in k for k in weights)
    assert all(torch.equal(weights[k], saved[k]) for k in saved)
    loaded = FineTuner.load(tmp_path / "ckpt-2", model=vit(), device="cpu")
    torch.testing.assert_close(loaded.predict(X), ft.predict(X), rtol=1e-5, atol=1e-6)
    plain = vit()
    plain.load_state_dict(weights, strict=True)
