"""The authors' Python API, as a drop-in: ``LightHuBERTConfig``, ``LightHuBERT`` and the
``supernet`` object, so that their README example runs unchanged.

``LightHuBERT`` holds the supernet's weights under the released names (so ``load_state_dict``
takes ``checkpoint['model']``); setting a subnet cuts that subnet's weights once, on first use,
into a :class:`~lighthubert.model.SubnetModel` that runs the forward pass.

Differences from the authors' code, all deliberate: inference only (no masking, dropout or
training losses); with a ``padding_mask``, frames are counted exactly per utterance and GroupNorm
uses real frames only, so a padded utterance gives the numbers it gives alone; sliding-window
attention (in no released space) is refused.
"""

from __future__ import annotations

import random
import warnings
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import LightHubertWarning, WaveformError
from .fairseq_cfg import MODEL_DEFAULTS, TRAINING_DEFAULTS, init_constant
from .model import MIN_SAMPLES, ModelConfig, Output, SubnetModel, cut_subnet, frame_mask, released_layout
from .space import SUBNET_KEYS, check_subnet, count_params, get_space

_MODEL_KEYS = MODEL_DEFAULTS
_TRAINING_KEYS = TRAINING_DEFAULTS


class LightHuBERTConfig:
    """The authors' config: known fields with their defaults, updated from ``cfg`` (unknown keys,
    such as ``_name`` or ``pruner_supernet``, are ignored). Set ``supernet_type`` to 'base' or 'small'."""

    def __init__(self, cfg: Mapping | None = None):
        self.supernet_type: str = "base"
        self.__dict__.update(_TRAINING_KEYS)
        self.__dict__.update(_MODEL_KEYS)
        if cfg is not None:
            self.update(cfg)

    def update(self, cfg: Mapping) -> None:
        for key, value in cfg.items():
            if key in self.__dict__:
                self.__dict__[key] = value

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict({k: getattr(self, k) for k in _MODEL_KEYS})

    def __repr__(self) -> str:
        return f"LightHuBERTConfig({self.__dict__})"


class LightHuBERTSupernetConfig:
    """The authors' ``model.supernet``: the search space and its subnets."""

    def __init__(self, supernet_type: str = "base"):
        self.supernet_type = supernet_type.lower()
        self.space = get_space(self.supernet_type)

    @property
    def supernet(self) -> dict:
        return {"atten_dim": 768, "embed_dim": 768, "ffn_ratio": 4.0, "heads_num": 12, "layer_num": 12}

    @property
    def search_space(self) -> dict:
        return self.space.authors_dict()

    @property
    def search_space_size(self) -> int:
        return self.space.num_subnets

    @property
    def num_subnets(self) -> int:
        return self.space.num_subnets

    @property
    def dimensions(self) -> list:
        return ["atten_dim", "embed_dim", "ffn_ratio", "heads_num", "layer_num"]

    @property
    def slide_mode(self) -> str:
        return "stride"

    @property
    def subnet(self) -> dict:
        """The default subnet (with the authors' extra ``ffn_ratio`` list)."""
        sub = self.space.default_subnet
        ratio = self.space.default_ratio
        return {"atten_dim": sub["atten_dim"], "embed_dim": sub["embed_dim"], "ffn_ratio": [ratio] * sub["layer_num"],
                "ffn_embed": sub["ffn_embed"], "heads_num": sub["heads_num"], "layer_num": sub["layer_num"],
                "slide_wsz": sub["slide_wsz"]}

    @property
    def max_subnet(self) -> dict:
        return self.space.max_subnet

    @property
    def min_subnet(self) -> dict:
        return self.space.min_subnet

    def sample_subnet(self, rng: random.Random | None = None) -> dict:
        """A random subnet; from Python's global ``random`` by default, drawing in the authors' order."""
        return self.space.sample(rng)


_WEIGHTS_ONLY = ("the submodules of lighthubert.LightHuBERT hold the authors' weights under their names, but the "
                 "forward pass runs as a whole in extract_features (a compact copy of the subnet): {what}; take the "
                 "hidden states from extract_features(source, ret_hs=True)")


class Weights(nn.Module):
    """A part of :class:`LightHuBERT`'s module tree (``encoder``, ``encoder.layers[3]``, ...): its weights
    only. It cannot be called, and a forward hook on it is refused: it would never run (s3prl's experts
    collect hidden states with such hooks; before, they silently got none)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(_WEIGHTS_ONLY.format(what="a submodule cannot be called"))

    def register_forward_hook(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(_WEIGHTS_ONLY.format(what="a forward hook on a submodule would never run"))

    def register_forward_pre_hook(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(_WEIGHTS_ONLY.format(what="a forward hook on a submodule would never run"))


def _as_lists(module: nn.Module) -> None:
    """Turn every container whose children are numbered (``encoder.layers``,
    ``feature_extractor.conv_layers``, ``layer_pred_heads``, ...) into an ``nn.ModuleList``, as in
    the authors' model, so that ``model.encoder.layers[3]`` and ``len(...)`` work. Numbers without
    weights (the authors' dropouts, activations, heads of layers without one) become ``nn.Identity``:
    ``state_dict()`` is unchanged."""
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        _as_lists(child)
        names = list(child._modules)
        if names and type(child) is Weights and not child._parameters and all(n.isdigit() for n in names):
            numbered = [child._modules[str(i)] if str(i) in child._modules else nn.Identity()
                        for i in range(max(map(int, names)) + 1)]
            module._modules[name] = nn.ModuleList(numbered)


class LightHuBERT(nn.Module):
    """The supernet with the authors' interface (inference only).

    Like the authors' model, a freshly built one runs the *max* subnet until
    :meth:`set_sample_config` is called.
    """

    def __init__(self, cfg: LightHuBERTConfig):
        super().__init__()
        self.cfg = cfg
        self.model_cfg = cfg.model_config()
        self.supernet = LightHuBERTSupernetConfig(cfg.supernet_type)
        for name, shape in released_layout(self.model_cfg).items():
            *path, leaf = name.split(".")
            module: nn.Module = self
            for part in path:
                if part not in module._modules:
                    module.add_module(part, Weights())
                module = module._modules[part]
            module.register_parameter(leaf, nn.Parameter(self._init(name, shape)))
        _as_lists(self)
        self.encoder.layerdrop = cfg.encoder_layerdrop  # read and set by s3prl's expert; inference runs every layer
        self.encoder_layers, self.encoder_embed_dim = cfg.encoder_layers, cfg.encoder_embed_dim
        self.teacher_embed_dim, self.feature_grad_mult = cfg.teacher_embed_dim, cfg.feature_grad_mult
        self._compact: SubnetModel | None = None  # a cache, never a submodule: see _set_compact
        self._compact_key: tuple = ()
        self.set_sample_config(self.supernet.max_subnet)

    @staticmethod
    def _init(name: str, shape: tuple[int, ...]) -> Tensor:
        value = init_constant(name)
        return torch.randn(shape) * 0.02 if value is None else torch.full(shape, value)

    # -- subnets

    def set_sample_config(self, config: Mapping) -> None:
        """Run the subnet ``config`` (the authors' dict) from now on. As in the authors' code, only
        its six subnet keys are read: others (their default subnet's ``ffn_ratio``, a tool's
        ``params``) are ignored, not checked."""
        if isinstance(config, Mapping):
            config = {k: v for k, v in config.items() if k in SUBNET_KEYS}
        self.subnet_config = check_subnet(config)
        self._set_compact(None)

    # the authors' names for the current subnet's dimensions (set by their set_sample_config)
    sample_layer_num = property(lambda self: self.subnet_config["layer_num"])
    sample_embed_dim = property(lambda self: self.subnet_config["embed_dim"])
    sample_atten_dim = property(lambda self: self.subnet_config["atten_dim"])
    sample_ffn_embed = property(lambda self: self.subnet_config["ffn_embed"])
    sample_heads_num = property(lambda self: self.subnet_config["heads_num"])
    sample_slide_wsz = property(lambda self: self.subnet_config["slide_wsz"])

    def freeze_feature_extractor(self) -> None:
        """As the authors': the conv feature extractor's weights take no gradient."""
        for p in self.feature_extractor.parameters():
            p.requires_grad = False
        self.extractor_frozen = True

    def dynamize(self, mode: bool = True, log_subnet: bool = True) -> None:
        """As the authors': ``False`` runs the space's default subnet; ``True`` samples a new subnet
        (Python's global ``random``) before each ``model(...)`` call (``extract_features`` keeps the
        current one, as theirs does). ``log_subnet`` is accepted (nothing is logged)."""
        self.dynamic = mode
        hook = self.__dict__.pop("_dynamic_hook", None)
        if hook is not None:
            hook.remove()
        if not mode:
            self.set_sample_config(self.supernet.subnet)
            return
        self._dynamic_hook = self.register_forward_pre_hook(
            lambda module, args: module.set_sample_config(module.supernet.sample_subnet()))

    def calc_sampled_param_num(self) -> int:
        """The current subnet's parameter count, as the authors count it."""
        fixed = sum(p.numel() for n, p in self.named_parameters()
                    if not n.startswith(("post_extract_proj", "encoder", "layer_pred_heads")))
        return count_params(self.subnet_config, fixed, **self.model_cfg.conv_sizes)

    def subnet_model(self) -> SubnetModel:
        """The current subnet with its weights cut: once, and again after a new subnet or any change
        of the supernet's weights (``load_state_dict``, a move to another device or dtype, in-place
        edits such as ``p.mul_(2)`` or an optimiser step, ``p.data = ...``). The authors' model cuts
        on every forward pass; this one cuts when a weight's storage or version counter changed.
        Edits through ``p.data`` in place (``p.data.copy_(...)``) bypass the version counter, as
        they bypass autograd: call :meth:`set_sample_config` after them."""
        key = self._weights_key()
        if self._compact is None or key != self._compact_key:
            # weights made under torch.inference_mode (a model built there) cannot become parameters
            # outside it: those are copied (the uncut ones were shared as they are, and failed)
            inference = not torch.is_inference_mode_enabled()
            state = {k: (v.clone() if inference and v.is_inference() else v).detach() for k, v in self.state_dict().items()}
            dtype = self.post_extract_proj.weight.dtype
            compact = cut_subnet(state, self.model_cfg, self.subnet_config)
            self._set_compact(SubnetModel.from_state(self.model_cfg, self.subnet_config, compact, dtype=dtype))
            self._compact_key = key
        return self._compact

    def _weights_key(self) -> tuple:
        """What identifies the supernet's current weights without reading them: each parameter's
        storage address and in-place version (inference tensors have no version: their address only)."""
        key = []
        for p in self.parameters():
            try:
                version = p._version
            except RuntimeError:  # an inference tensor (made under torch.inference_mode)
                version = -1
            key.append((p.data_ptr(), version))
        return tuple(key)

    def _set_compact(self, model: SubnetModel | None) -> None:
        """Keep the cut subnet out of the module tree (``nn.Module`` registers a module attribute as
        a submodule): ``parameters()``, ``state_dict()`` and ``calc_sampled_param_num()`` must see
        the supernet's weights only, before and after a forward pass, as the authors' do."""
        object.__setattr__(self, "_compact", model)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        self._set_compact(None)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn, *args, **kwargs):
        self._set_compact(None)
        return super()._apply(fn, *args, **kwargs)

    # -- forward

    def extract_features(self, source: Tensor, padding_mask: Tensor | None = None, mask: bool = False,
                         ret_conv: bool = False, ret_hs: bool = False, cat_heads: bool = False,
                         output_layer: int | None = None) -> tuple[Any, Tensor | None]:
        """source: (B, N) waveform at 16 kHz; padding_mask: (B, N) True on padded samples.

        Returns (features, padding_mask): the last layer (B, T, E), or with ``ret_hs`` the list of
        L + 1 hidden states (with ``cat_heads`` also, as in the authors' code, the prediction heads'
        outputs: one (B, T, teacher_embed_dim) tensor per head chunk), or with ``ret_conv`` hidden
        state 0; padding_mask (B, T) True on padded frames, None when none was given.
        ``output_layer`` is accepted and, as in the authors' code, has no effect.
        """
        if mask:
            raise NotImplementedError("mask=True (random span masking, for pre-training) is not supported: inference only")
        if ret_hs:
            out, pm = self._run(source, padding_mask, last=cat_heads)
            feature: Any = [out.hidden[i] for i in range(len(out.hidden))]
            if cat_heads:
                feature += [chunk for chunks in self.layer_heads(out) if chunks is not None for chunk in chunks]
        elif ret_conv:
            out, pm = self._run(source, padding_mask, layers=[0])
            feature = out.hidden[0]
        else:
            out, pm = self._run(source, padding_mask, layers=[], last=True)
            feature = out.last
        return feature, pm

    def _run(self, source: Tensor, padding_mask: Tensor | None, layers: list[int] | None = None,
             last: bool = False) -> tuple[Output, Tensor | None]:
        """The current subnet on (B, N) ``source``: its :class:`Output` (all hidden states when
        ``layers`` is None) and the (B, T) frame padding mask (None when ``padding_mask`` is)."""
        if self.training and torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            warnings.warn("lighthubert.LightHuBERT is inference only: in training mode it applies no dropout and no "
                          "gradient reaches its weights; call .eval() (as the authors' README does) or run under "
                          "torch.no_grad() to extract features", LightHubertWarning, stacklevel=3)
        if source.shape[-1] < MIN_SAMPLES:  # a RuntimeError, as the authors' conv raises, but one that says why
            raise RuntimeError(f"source has {source.shape[-1]} samples per row; LightHuBERT needs at least {MIN_SAMPLES} "
                               "(25 ms at 16 kHz) for one frame")
        model = self.subnet_model()
        lengths = None
        if padding_mask is not None:
            real = ~padding_mask.bool()
            lengths = real.sum(-1)
            if not torch.equal(real, frame_mask(lengths, real.shape[-1])):
                raise WaveformError("padding_mask must mark padding at the end of each row (True after the real "
                                    "samples); left or inner padding is not supported")
            if short := (lengths < MIN_SAMPLES).nonzero().flatten().tolist():  # as the authors' code, but said
                warnings.warn(f"row{'s' if len(short) > 1 else ''} {', '.join(map(str, short))} of the batch "
                              f"{'have' if len(short) > 1 else 'has'} fewer than {MIN_SAMPLES} real samples (25 ms at "
                              "16 kHz): no frame; its output is padding only (padding_mask all True there)",
                              LightHubertWarning, stacklevel=3)
        with torch.no_grad():
            out = model(source, lengths, layers=layers, last=last)
        if padding_mask is None:
            return out, None
        frames = next(iter(out.hidden.values()), out.last).shape[1]
        n = out.lengths if out.lengths is not None else torch.full((source.shape[0],), frames, device=source.device)
        pm = ~frame_mask(n, frames)
        if 0 in out.hidden:  # the authors' encoder zeroes its input on padded frames in place, hidden state 0 too
            out.hidden[0] = out.hidden[0].masked_fill(pm[:, :, None], 0)
        return out, pm

    def forward_features(self, source: Tensor) -> Tensor:
        """The authors' ``forward_features``: the current subnet's convolutional features (B, C, T) of
        the (B, N) waveform ``source``, as given (not normalised, as in their code)."""
        if source.shape[-1] < MIN_SAMPLES:
            raise RuntimeError(f"source has {source.shape[-1]} samples per row; LightHuBERT needs at least {MIN_SAMPLES} "
                               "(25 ms at 16 kHz) for one frame")
        with torch.no_grad():
            x, _ = self.subnet_model().feature_extractor(source, None)
        return x.transpose(1, 2)

    def forward_padding_mask(self, features: Tensor, padding_mask: Tensor) -> Tensor:
        """The authors' ``forward_padding_mask``: the (B, N) sample mask (True on padding) as a (B, T)
        frame mask for ``features`` (B, T, ...): the samples are cut to a multiple of T, split into T
        equal runs, and a frame is padding when its whole run is."""
        frames = features.shape[1]
        usable = padding_mask.shape[1] - padding_mask.shape[1] % frames
        return padding_mask[:, :usable].reshape(padding_mask.shape[0], frames, -1).all(-1)

    def apply_mask(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("apply_mask (random span masking, for pre-training) is not supported: inference only")

    @torch.no_grad()
    def layer_heads(self, out: Output) -> list[tuple[Tensor, ...] | None]:
        """The authors' ``layer_heads``: per supernet layer, None or the chunks (each (B, T,
        teacher_embed_dim)) of its prediction head applied to that layer's output; the head of the
        last layer alone (the released files) reads the final output. ``out`` must hold every
        hidden state and the final output."""
        cfg = self.model_cfg
        heads: list[tuple[Tensor, ...] | None] = [None] * cfg.encoder_layers
        if getattr(self, "layer_pred_heads", None) is None:  # none, or remove_pretraining_modules()
            return heads
        with_head = [i for i, n in enumerate(cfg.layer_pred_num) if n > 0]
        if with_head != [cfg.encoder_layers - 1] and len(out.hidden) - 1 != cfg.encoder_layers:
            raise ValueError("Multi-layer prediction requires 0.0 layerdrop.")  # the authors' refusal
        for i in with_head:
            hs = out.last if with_head == [cfg.encoder_layers - 1] else out.hidden[i + 1]
            w = getattr(self.layer_pred_heads, str(i)).weight[:, : hs.shape[-1]]
            heads[i] = torch.split(F.linear(hs, w.to(hs.dtype)), cfg.teacher_embed_dim, dim=-1)
        return heads

    def remove_pretraining_modules(self) -> None:
        """As the authors': drop the prediction heads (``cat_heads`` then adds nothing)."""
        self.layer_pred_heads = None

    def forward(self, source: Tensor, target_list: Any = None, padding_mask: Tensor | None = None, mask: bool = True,
                features_only: bool = False, output_layer: int | None = None, mask_indices: Any = None) -> dict:
        """The authors' signature. Inference only: ``mask`` is ignored (no random masking),
        ``target_list`` and ``mask_indices`` (pre-training) are refused. Returns ``x`` (B, T, E),
        ``padding_mask``, ``hidden_states`` (L + 1 tensors) and ``layer_heads``."""
        if target_list is not None or mask_indices is not None:
            raise NotImplementedError("target_list and mask_indices are for pre-training, not supported: inference only")
        out, pm = self._run(source, padding_mask, last=True)
        hs = [out.hidden[i] for i in range(len(out.hidden))]
        return {"x": out.last, "padding_mask": pm, "hidden_states": hs, "layer_heads": self.layer_heads(out)}
