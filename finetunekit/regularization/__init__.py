"""Resisting overfitting: batch mixing (mixup/CutMix), the train/validation gap, learning curves."""
