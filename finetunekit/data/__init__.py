"""Turn what users pass to fit/evaluate/predict into DataLoaders, Keras-style (see docs/data.md)."""

from finetunekit.data.files import ImageFiles, from_csv, from_df, from_paths
from finetunekit.data.folders import ImageFolder
from finetunekit.data.loaders import make_loader, split_validation
from finetunekit.data.prepare import PreparedData, prepare_data

__all__ = [
    "ImageFiles",
    "ImageFolder",
    "PreparedData",
    "from_csv",
    "from_df",
    "from_paths",
    "make_loader",
    "prepare_data",
    "split_validation",
]
