"""The parts FineTuner is assembled from (see finetunekit.tuner)."""
