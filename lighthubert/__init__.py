"""LightHuBERT: load the released once-for-all HuBERT checkpoints, choose a subnet, extract
hidden states exactly as the authors' implementation computes them.

New code::

    import lighthubert
    ext = lighthubert.load("small", subnet="default")       # or a path, or "random:small"
    feats = ext([wave_16k], layers="all")                   # [(L+1, T, E) float32 tensor]
    lighthubert.extract("wavs/", "feats.h5", checkpoint="small", layers="all")   # what `lhb extract` does

The authors' API (drop-in)::

    from lighthubert import LightHuBERT, LightHuBERTConfig
"""

from .audio import AudioError, load_audio
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    cache_dir,
    export_subnet,
    load_checkpoint,
    random_checkpoint,
    write_random_checkpoint,
)
from .errors import LightHubertError, SettingError
from .compat import LightHuBERT, LightHuBERTConfig, LightHuBERTSupernetConfig
from .extractor import Extractor, load, resolve_layers
from .job import ExtractJob, extract
from .model import ModelConfig, SubnetModel
from .reader import Features, FeaturesDataset, FeaturesError, LengthGroupedSampler, open_features, pad_collate
from .space import SPACES, SearchSpace, SubnetError, best_under_budget, parse_budget, subnet_from_text

__version__ = "0.1.0"

__all__ = [
    "AudioError", "Checkpoint", "CheckpointError", "ExtractJob", "Extractor", "Features", "FeaturesDataset",
    "FeaturesError", "LengthGroupedSampler", "LightHubertError", "SettingError", "extract", "subnet_from_text",
    "LightHuBERT", "LightHuBERTConfig",
    "LightHuBERTSupernetConfig", "ModelConfig", "SPACES", "SearchSpace", "SubnetError", "SubnetModel",
    "__version__", "best_under_budget", "cache_dir", "export_subnet", "load", "load_audio", "load_checkpoint",
    "open_features", "pad_collate", "parse_budget", "random_checkpoint", "resolve_layers", "write_random_checkpoint",
]
