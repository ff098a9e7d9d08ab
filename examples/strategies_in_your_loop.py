"""A finetunekit strategy inside your own PyTorch loop, without FineTuner.fit.

FineTuner builds the model (pretrained backbone + new head) and its layer groups; StrategyRunner hands
you the optimizer param groups and applies the strategy's per-epoch plan (requires_grad, BatchNorm
modes, per-group LRs). Everything else -- data, loss, precision, logging -- is your loop's.

    python examples/strategies_in_your_loop.py            # offline: digits + EfficientNet-Lite0 weights
    FINETUNEKIT_FAST=1 python examples/strategies_in_your_loop.py   # a few samples, 1 epoch (CI)
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from finetunekit import FineTuner
from finetunekit.demo import lite0_weights_path, load_digits_images
from finetunekit.strategies import DiscriminativeLR, GradualUnfreeze, StrategyRunner, schedule_multiplier

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"  # CI: a few samples, 1 epoch


def to_tensors(images, labels, size=64):
    """uint8 N x 8 x 8 digits -> normalized float N x 3 x size x size (your own preprocessing)."""
    x = torch.from_numpy(images).float().unsqueeze(1) / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(labels)


def main(epochs: int = 1 if FAST else 3, base_lr: float = 2e-3, batch_size: int = 32) -> float:
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits_images(seed=0, n_train=64 if FAST else 300)
    train = torch.utils.data.TensorDataset(*to_tensors(x_train, y_train))
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True)
    x_test_t, y_test_t = to_tensors(x_test[:500], y_test[:500])

    ft = FineTuner("timm/efficientnet_lite0", num_classes=10, weights=lite0_weights_path(), image_size=64,
                   strategy=[GradualUnfreeze(every=1), DiscriminativeLR(0.7)], device="cpu")  # fmt: skip
    print(ft.summary(epochs=epochs))
    model = ft.model
    runner = StrategyRunner.from_tuner(ft)
    optimizer = torch.optim.AdamW(runner.param_groups(weight_decay=0.01), lr=base_lr)
    total = epochs * len(loader)
    schedule = schedule_multiplier("one_cycle", total)  # or any function of progress in [0, 1]

    step = 0
    for epoch in range(epochs):
        plan = runner.begin_epoch(epoch, optimizer)  # requires_grad, frozen BN -> eval, model.train()
        print(f"epoch {epoch}: plan {[None if s is None else round(s, 3) for s in plan]}")
        for xb, yb in loader:
            runner.write_lrs(optimizer, base_lr, schedule(step / total))  # base x schedule x group scale
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_test_t).argmax(1) == y_test_t).float().mean().item()
        print(f"epoch {epoch}: loss {loss.item():.3f}  held-out accuracy {accuracy:.3f}")
    print(
        f"Shown: GradualUnfreeze + DiscriminativeLR applied in a plain PyTorch loop; {accuracy:.3f} held-out "
        f"accuracy (chance 0.1) after {epochs} epoch(s)."
    )
    return accuracy


if __name__ == "__main__":
    main()
