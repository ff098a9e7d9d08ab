"""compile(grad_checkpointing=True): same gradients and BN statistics as without, recomputation visible
as a second forward pass of each checkpointed block, with timm's switch and with torch.utils.checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TinyNet, make_images

from finetunekit import FineTuner
from finetunekit.callbacks import BackupAndRestore, LambdaCallback
from finetunekit.errors import ConfigError
from finetunekit.strategies import GradualUnfreeze

timm = pytest.importorskip("timm")
X, Y = make_images(32, 3, 16, seed=3)


def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3, drop_rate=0.1
    )


def resnet() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3)


def grads_and_calls(
    make, module: str, checkpoint: bool, **kw
) -> tuple[dict[str, torch.Tensor], int, FineTuner]:
    ft = FineTuner(make(), 3, device="cpu", image_size=kw.pop("size", 16), seed=0, **kw)
    ft.compile(grad_checkpointing=checkpoint)
    calls = []
    # a pre-hook inside the block: recomputation starts the block again (and may stop before its end)
    ft.model.get_submodule(module).register_forward_pre_hook(lambda *_: calls.append(1))
    ft.model.train()
    x = torch.randn(4, 3, *ft.data_config.input_size[1:], generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)  # dropout: the recomputation must reuse the forward's masks
    ft.model(x).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in ft.model.named_parameters() if p.grad is not None}
    return grads, len(calls), ft


@pytest.mark.parametrize(
    ("make", "module", "kw"),
    [(vit, "blocks.0.attn.qkv", {}), (resnet, "layer2.0.conv1", {"size": 32}), (TinyNet, "stage1.0", {})],
    ids=["timm-vit", "torchvision-resnet", "module"],
)
def test_same_gradients_and_each_block_runs_twice(make, module, kw):
    plain, plain_calls, _ = grads_and_calls(make, module, False, **dict(kw))
    ckpt, ckpt_calls, ft = grads_and_calls(make, module, True, **dict(kw))
    assert plain_calls == 1 and ckpt_calls == 2
    assert plain.keys() == ckpt.keys()
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-6, msg=n)
    assert "gradient checkpointing: on" in ft.summary()


def timm_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, num_classes=3)


@pytest.mark.parametrize("make", [resnet, timm_resnet], ids=["torchvision-resnet", "timm-resnet"])
def test_batchnorm_statistics_are_updated_once_per_step(make):
    def stats(checkpoint: bool) -> dict[str, torch.Tensor]:
        ft = FineTuner(make(), 3, device="cpu", image_size=32, seed=0).compile(grad_checkpointing=checkpoint)
        ft.fit(X, Y, batch_size=8, epochs=1, verbose=0, augment=False)
        return {k: v for k, v in ft.model.state_dict().items() if "running" in k or "num_batches" in k}

    plain, ckpt = stats(False), stats(True)
    assert all(torch.equal(plain[k], ckpt[k]) for k in plain if "num_batches" in k)
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)


def test_with_the_feature_cache_and_unfreezing_the_fit_is_unchanged():
    def run(checkpoint: bool) -> FineTuner:
        torch.manual_seed(0)
        ft = FineTuner(TinyNet(num_classes=3), 3, device="cpu", image_size=16, seed=0,
                       strategy=GradualUnfreeze(every=2))  # fmt: skip
        ft.compile(lr=0.05, grad_checkpointing=checkpoint)
        ft.fit(X, Y, batch_size=8, epochs=4, verbose=0, augment=False)
        return ft

    plain, ckpt = run(False), run(True)
    assert "on in epochs 0, 1" in ckpt.summary()
    assert "torch.utils.checkpoint around stem, stage1" in ckpt.summary()
    for a, b in zip(ckpt.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class Crash(Exception):
    pass


def test_resume_with_checkpointing_is_bitwise(tmp_path: Path):
    def run(crash: bool):
        torch.manual_seed(0)  # the module's initial weights
        ft = FineTuner(TinyNet(num_classes=3), 3, device="cpu", image_size=16, seed=0)
        ft.compile(lr=0.05, grad_checkpointing=True)
        cbs = [BackupAndRestore(tmp_path / "b", save_freq=2)]
        if crash:

            def stop(batch: int, logs: dict) -> None:
                if ft._trainer.epoch == 1 and batch == 1:
                    raise Crash

            cbs.append(LambdaCallback(on_train_batch_end=stop))
        try:
            ft.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=cbs)
        except Crash:
            return None
        return ft.model.state_dict()

    assert run(True) is None
    resumed = run(False)
    (tmp_path / "b").rename(tmp_path / "old")
    straight = run(False)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_switching_off_and_bad_values():
    ft = FineTuner(TinyNet(num_classes=3), 3, device="cpu", image_size=16).compile(grad_checkpointing=True)
    assert "forward" in ft.model.stem.__dict__
    ft.compile(grad_checkpointing=False)
    assert "forward" not in ft.model.stem.__dict__
    assert "gradient checkpointing: off" in ft.summary()
    with pytest.raises(ConfigError, match="grad_checkpointing='yes' is invalid"):
        ft.compile(grad_checkpointing="yes")


class TailNormNet(TinyNet):
    """TinyNet with a BatchNorm1d after the pool, in a layer group of its own: a leaf layer, so never
    checkpointed, yet run in train mode; its statistics must move exactly as without checkpointing."""

    def __init__(self) -> None:
        super().__init__(num_classes=3)
        self.fc = torch.nn.Sequential(
            torch.nn.Linear(16, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 3)
        )


def test_batchnorm_outside_the_checkpointed_modules_updates_as_without():
    def stats(checkpoint: bool) -> tuple[dict[str, torch.Tensor], str]:
        torch.manual_seed(0)
        ft = FineTuner(TailNormNet(), 3, device="cpu", image_size=16, seed=0,
                       groups=["stem", "stage1", "fc.0", "fc.1"])  # fmt: skip
        ft.compile(grad_checkpointing=checkpoint)
        ft.fit(X, Y, batch_size=8, epochs=2, verbose=0, augment=False)
        kept = {k: v for k, v in ft.model.state_dict().items() if "running" in k or "num_batches" in k}
        return kept, ft.summary()

    plain, _ = stats(False)
    ckpt, summary = stats(True)
    assert "around stem, stage1" in summary  # fc.1 (a leaf) is not checkpointed
    assert int(ckpt["fc.1.num_batches_tracked"]) == 8 and not torch.equal(
        ckpt["fc.1.running_mean"], torch.zeros(16)
    )
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)
