"""fgir: efficient fine-grained image recognition on one timm-based toolkit.

Python API (mirrors the CLI)::

    import fgir
    model = fgir.create_model("lrnet14", num_classes=200)
    ds = fgir.create_dataset("fonts", split="train")
    result = fgir.train(fgir.load_config(["configs/recipes/demo.yaml"]))
    predictor = fgir.load("runs/demo/last.safetensors")
    predictor.predict(["img.jpg"])
"""

__version__ = "0.1.0"

from .config import Config, load_config  # noqa: E402
from .models.factory import create_model  # noqa: E402


def create_dataset(*args, **kwargs):
    """See :func:`fgir.data.datasets.create_dataset`."""
    from .data.datasets import create_dataset as _create

    return _create(*args, **kwargs)


def train(cfg, **kwargs):
    """See :func:`fgir.engine.train.train`."""
    from .engine.train import train as _train

    return _train(cfg, **kwargs)


def load(checkpoint, **kwargs):
    """See :func:`fgir.serve.predict.Predictor.from_checkpoint`."""
    from .serve.predict import Predictor

    return Predictor.from_checkpoint(checkpoint, **kwargs)


__all__ = ["Config", "load_config", "create_model", "create_dataset", "train", "load", "__version__"]
