"""A custom fine-tuning strategy is a small Strategy subclass: one method, plan(n_groups, epoch).

This one trains the head alone for `warm` epochs, then every group with the head 10x faster than the
backbone. It composes with the built-ins like any other, and ft.summary() shows its plan up front.

    python examples/custom_strategy.py           # offline: digits + EfficientNet-Lite0 weights
"""

from __future__ import annotations

from finetunekit import FineTuner
from finetunekit.demo import lite0_weights_path, load_digits_images
from finetunekit.strategies import DiscriminativeLR, Strategy


class HeadFirstThenAll(Strategy):
    """Head alone for `warm` epochs, then everything with the backbone at a tenth of the head's LR."""

    def __init__(self, warm: int = 1):
        self.warm = warm

    def plan(self, n_groups: int, epoch: int) -> list[float | None]:
        if epoch < self.warm:
            return [None] * (n_groups - 1) + [1.0]  # None = frozen (BN in eval mode too)
        return [0.1] * (n_groups - 1) + [1.0]

    def horizon(self, n_groups: int) -> int:  # optional: how far summary() looks without epochs=
        return self.warm + 1

    def schedule_restarts(self, n_groups: int) -> list[int]:  # optional: a fresh LR cycle per phase
        return [self.warm]

    def config(self) -> dict:  # optional: what save() records
        return {"name": "HeadFirstThenAll", "warm": self.warm, "train_bn": self.train_bn}


def main(epochs: int = 3) -> dict[str, float]:
    x_train, y_train, x_test, y_test = load_digits_images(seed=0, n_train=300)
    ft = FineTuner("timm/efficientnet_lite0", num_classes=10, weights=lite0_weights_path(), image_size=64,
                   strategy=[HeadFirstThenAll(warm=1), DiscriminativeLR(0.8)], seed=0)  # fmt: skip
    ft.compile()  # lr=2e-3, one_cycle: the measured defaults
    print(ft.summary(epochs=epochs))
    found = ft.find_lr(x_train, y_train, num_steps=50)  # under epoch 0's plan; model left untouched
    print(found)
    # augment=False: the default augmentation flips images horizontally, which is wrong for digits
    ft.fit(x_train, y_train, epochs=epochs, augment=False, verbose=1)
    result = ft.evaluate(x_test[:500], y_test[:500])
    print(result)
    return result


if __name__ == "__main__":
    main()
