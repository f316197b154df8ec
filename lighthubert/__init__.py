"""LightHuBERT: load the released once-for-all HuBERT checkpoints, choose a subnet, extract
hidden states exactly as the authors' implementation computes them.

New code::

    import lighthubert
    ext = lighthubert.load("small", subnet="default")       # or a path, or "random:small"
    feats = ext([wave_16k], layers="all")                   # [(L+1, T, E) float32 tensor]
    lighthubert.extract("wavs/", "feats.h5", checkpoint="small", layers="all")   # what `lhb extract` does

The authors' API (drop-in)::

    from lighthubert import LightHuBERT, LightHuBERTConfig

The names below are imported on first use, so that ``import lighthubert`` (and ``lhb --help``) does
not load torch; the first of them also lets a plain ``torch.load`` open the released files
(:mod:`lighthubert.checkpoint` allows their numpy scalars).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "audio": ("AudioError", "load_audio"),
    "checkpoint": ("Checkpoint", "CheckpointError", "cache_dir", "export_subnet", "load_checkpoint",
                   "random_checkpoint", "write_random_checkpoint"),
    "errors": ("LightHubertError", "LightHubertWarning", "SettingError", "WaveformError"),
    "compat": ("LightHuBERT", "LightHuBERTConfig", "LightHuBERTSupernetConfig"),
    "extractor": ("Extractor", "load", "resolve_layers"),
    "job": ("ExtractJob", "extract"),
    "model": ("ModelConfig", "SubnetModel"),
    "reader": ("Features", "FeaturesDataset", "FeaturesError", "LengthGroupedSampler", "open_features", "pad_collate"),
    "space": ("SPACES", "SearchSpace", "SubnetError", "best_under_budget", "parse_budget", "subnet_from_text"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF) + ["__version__"]


def __getattr__(name: str) -> Any:
    """``lighthubert.X``: a public name is imported from its module on first use; a submodule
    (``lighthubert.job``) is imported as Python does for ``import lighthubert.job``."""
    module = _MODULE_OF.get(name)
    if module is None:
        if name.startswith("__"):  # __wrapped__, __test__, ...: asked by tools, never a submodule
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    importlib.import_module(f"{__name__}.checkpoint")  # torch.load of released files works from here on
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names and the submodules imported so far (not this module's own helpers)."""
    loaded = {name for name, value in globals().items()
              if (type(value) is type(importlib) and value.__name__.startswith(f"{__name__}.")) or name.startswith("__")}
    return sorted(set(__all__) | loaded)


if TYPE_CHECKING:  # what type checkers and editors see
    from .audio import AudioError, load_audio
    from .checkpoint import (Checkpoint, CheckpointError, cache_dir, export_subnet, load_checkpoint,
                             random_checkpoint, write_random_checkpoint)
    from .compat import LightHuBERT, LightHuBERTConfig, LightHuBERTSupernetConfig
    from .errors import LightHubertError, LightHubertWarning, SettingError, WaveformError
    from .extractor import Extractor, load, resolve_layers
    from .job import ExtractJob, extract
    from .model import ModelConfig, SubnetModel
    from .reader import Features, FeaturesDataset, FeaturesError, LengthGroupedSampler, open_features, pad_collate
    from .space import SPACES, SearchSpace, SubnetError, best_under_budget, parse_budget, subnet_from_text
