"""The network: one subnet, its weights cut from the supernet once, and its forward pass.

Shapes use B (batch), N (samples), T (frames), C (conv channels, 512), E (subnet width),
A (attention width of a layer, 64 * heads), F (FFN width of a layer), L (subnet depth).

SPEC.md §2 says how weights are cut, §3 what the forward pass computes. Batches carry the
per-utterance lengths along so that every utterance gets exactly the numbers it gets alone.
"""

from __future__ import annotations

import ast
import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .errors import LightHubertError
from .space import (
    HEAD_DIM,
    POS_CONV_GROUPS,
    POS_CONV_KERNEL,
    SUPERNET_EMBED,
    SUPERNET_FFN,
    SUPERNET_LAYERS,
    kept_layers,
)

DEFAULT_CONV = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"


class ConfigError(LightHubertError, ValueError):
    """A checkpoint config this library cannot build a network for."""


def config_flag(value: Any, name: str) -> bool:
    """A true/false config field: a bool, or 0/1 (``bool("false")`` is True: a string "false" made a
    post-norm file pre-norm, silently)."""
    if isinstance(value, bool) or (type(value) is int and value in (0, 1)):
        return bool(value)
    raise ConfigError(f"{name} is {value!r}, not true or false")


MAX_CONV_LAYERS = 64
MAX_CONV_DIM, MAX_CONV_KERNEL = 4096, 1024
"""Bounds on ``conv_feature_layers`` (the released files have 7 layers of 512 channels, kernels <= 10)."""
MAX_CONV_POS = 1024
MAX_SPEC_CHARS = 10_000


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's ``conv_feature_layers`` string without ``eval``: only lists, tuples,
    integers, ``+`` and ``*`` are allowed. Every intermediate list is checked against
    :data:`MAX_CONV_LAYERS` before it is built, so no chain of ``*`` can exhaust memory."""

    def ev(node: ast.AST):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            if len(node.elts) > MAX_CONV_LAYERS:
                raise ValueError(f"more than {MAX_CONV_LAYERS} elements")
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Mult):
                seq, n = (left, right) if isinstance(right, int) else (right, left)
                if not isinstance(n, int):
                    raise ValueError("only a list times an integer can be multiplied")
                if isinstance(seq, int):
                    size = abs(seq * n) if abs(seq) <= MAX_CONV_DIM * MAX_CONV_KERNEL and abs(n) <= MAX_CONV_DIM * MAX_CONV_KERNEL else math.inf
                elif n < 0:
                    raise ValueError("repeat count out of range")
                else:
                    size = len(seq) * n
            elif isinstance(left, int) and isinstance(right, int):
                size = abs(left + right)
            elif type(left) is type(right):
                size = len(left) + len(right)
            else:
                raise ValueError("cannot add a number and a list")
            if size > (MAX_CONV_DIM * MAX_CONV_KERNEL if isinstance(left, int) and isinstance(right, int) else MAX_CONV_LAYERS):
                raise ValueError(f"too large (at most {MAX_CONV_LAYERS} layers of at most {MAX_CONV_DIM} channels)")
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported element {type(node).__name__}")

    text = str(spec)
    shown = text if len(text) <= 80 else text[:77] + "..."
    try:
        if len(text) > MAX_SPEC_CHARS:
            raise ValueError(f"longer than {MAX_SPEC_CHARS} characters")
        layers = ev(ast.parse(text, mode="eval"))
        if not isinstance(layers, (list, tuple)):
            raise ValueError("it must be a list of (dim, kernel, stride)")
        layers = [tuple(layer) if isinstance(layer, (list, tuple)) else layer for layer in layers]
        if not layers or any(not isinstance(layer, tuple) or len(layer) != 3 or not all(type(v) is int for v in layer)
                             or min(layer) < 1 for layer in layers):
            raise ValueError("each layer must be (dim, kernel, stride) of positive integers")
        for dim, kernel, stride in layers:
            if dim > MAX_CONV_DIM or kernel > MAX_CONV_KERNEL or stride > MAX_CONV_KERNEL:
                raise ValueError(f"layer ({dim}, {kernel}, {stride}) is too large (dim <= {MAX_CONV_DIM}, "
                                 f"kernel and stride <= {MAX_CONV_KERNEL})")
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError) as err:
        raise ConfigError(f"conv_feature_layers {shown!r} cannot be read: {err}") from None
    return layers


@dataclass(frozen=True)
class ModelConfig:
    """The fields of a checkpoint's ``cfg["model"]`` that shape the network (SPEC.md §1)."""

    extractor_mode: str = "layer_norm"
    conv_layers: tuple[tuple[int, int, int], ...] = tuple(parse_conv_layers(DEFAULT_CONV))
    conv_bias: bool = False
    encoder_layers: int = SUPERNET_LAYERS
    embed_dim: int = SUPERNET_EMBED
    ffn_dim: int = SUPERNET_FFN
    heads: int = SUPERNET_EMBED // HEAD_DIM
    layer_norm_first: bool = False
    conv_pos: int = POS_CONV_KERNEL
    conv_pos_groups: int = POS_CONV_GROUPS
    layer_pred_num: tuple[int, ...] = (0,) * (SUPERNET_LAYERS - 1) + (1,)
    teacher_embed_dim: int = 768

    @classmethod
    def from_dict(cls, model_cfg: Mapping) -> "ModelConfig":
        def get(name: str, default: Any = None) -> Any:
            value = model_cfg.get(name, default)
            read[0] = name  # the field a malformed value is said of
            return value

        read = [""]
        try:
            mode = get("extractor_mode", "layer_norm")
            if mode not in ("layer_norm", "default"):
                raise ConfigError(f"extractor_mode {mode!r} is not 'layer_norm' or 'default'")
            act = get("activation_fn", "gelu")
            if act != "gelu":
                raise ConfigError(f"activation_fn {act!r} is not supported (released files use gelu)")
            if int(get("pos_conv_depth", 1)) != 1:
                raise ConfigError("pos_conv_depth other than 1 is not supported (no released file uses it)")
            layer_pred = tuple(max(int(n), 0) for n in str(get("layer_pred_num", "0,0,0,0,0,0,0,0,0,0,0,1")).split(","))
            cfg = cls(
                extractor_mode=mode,
                conv_layers=tuple(parse_conv_layers(get("conv_feature_layers", DEFAULT_CONV))),
                conv_bias=config_flag(get("conv_bias", False), "conv_bias"),
                encoder_layers=int(get("encoder_layers", SUPERNET_LAYERS)),
                embed_dim=int(get("encoder_embed_dim", SUPERNET_EMBED)),
                ffn_dim=int(get("encoder_ffn_embed_dim", SUPERNET_FFN)),
                heads=int(get("encoder_attention_heads", 12)),
                layer_norm_first=config_flag(get("layer_norm_first", False), "layer_norm_first"),
                conv_pos=int(get("conv_pos", POS_CONV_KERNEL)),
                conv_pos_groups=int(get("conv_pos_groups", POS_CONV_GROUPS)),
                layer_pred_num=layer_pred,
                teacher_embed_dim=int(get("teacher_embed_dim", 768)),
            )
        except (TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"model config has a malformed field {read[0]}: {err}") from None
        geometry = (cfg.encoder_layers, cfg.embed_dim, cfg.ffn_dim, cfg.heads, cfg.conv_pos_groups)
        if geometry != (SUPERNET_LAYERS, SUPERNET_EMBED, SUPERNET_FFN, 12, POS_CONV_GROUPS):
            raise ConfigError(
                "the supernet must be 12 layers, 768 wide, 12 heads, FFN 3072, 16 pos-conv groups "
                f"as released; this config has {geometry}"
            )
        if not 1 <= cfg.conv_pos <= MAX_CONV_POS:
            raise ConfigError(f"conv_pos {cfg.conv_pos} is outside 1..{MAX_CONV_POS} (released files use 128)")
        if not 1 <= cfg.teacher_embed_dim <= MAX_CONV_DIM or any(n > 64 for n in cfg.layer_pred_num):
            raise ConfigError("teacher_embed_dim or layer_pred_num is out of range (released files use 768 and 0,...,0,1)")
        if len(cfg.layer_pred_num) != cfg.encoder_layers:
            raise ConfigError(f"layer_pred_num has {len(cfg.layer_pred_num)} entries, expected {cfg.encoder_layers}")
        return cfg

    @property
    def conv_dim(self) -> int:
        return self.conv_layers[-1][0]

    @property
    def conv_sizes(self) -> dict[str, int]:
        """The conv sizes a subnet's parameter count depends on: ``conv_dim`` and ``conv_pos`` of
        :func:`~lighthubert.space.count_params`."""
        return {"conv_dim": self.conv_dim, "conv_pos": self.conv_pos}

    def to_dict(self) -> dict:
        """Back to the fairseq-style keys (for files this library writes)."""
        return {
            "extractor_mode": self.extractor_mode,
            "conv_feature_layers": " + ".join(f"[{layer}]" for layer in self.conv_layers).replace(" ", ""),
            "conv_bias": self.conv_bias,
            "encoder_layers": self.encoder_layers,
            "encoder_embed_dim": self.embed_dim,
            "encoder_ffn_embed_dim": self.ffn_dim,
            "encoder_attention_heads": self.heads,
            "activation_fn": "gelu",
            "layer_norm_first": self.layer_norm_first,
            "conv_pos": self.conv_pos,
            "conv_pos_groups": self.conv_pos_groups,
            "pos_conv_depth": 1,
            "required_seq_len_multiple": 2,
            "layer_pred_num": ",".join(map(str, self.layer_pred_num)),
            "teacher_embed_dim": self.teacher_embed_dim,
        }


def released_layout(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight inference needs in a released (supernet) checkpoint."""
    shapes: dict[str, tuple[int, ...]] = {"mask_emb": (cfg.embed_dim,)}
    in_dim = 1
    for i, (dim, k, _) in enumerate(cfg.conv_layers):
        shapes[f"feature_extractor.conv_layers.{i}.0.weight"] = (dim, in_dim, k)
        if cfg.conv_bias:
            shapes[f"feature_extractor.conv_layers.{i}.0.bias"] = (dim,)
        if cfg.extractor_mode == "layer_norm":
            shapes[f"feature_extractor.conv_layers.{i}.2.1.weight"] = (dim,)
            shapes[f"feature_extractor.conv_layers.{i}.2.1.bias"] = (dim,)
        elif i == 0:
            shapes["feature_extractor.conv_layers.0.2.weight"] = (dim,)
            shapes["feature_extractor.conv_layers.0.2.bias"] = (dim,)
        in_dim = dim
    e, c = cfg.embed_dim, cfg.conv_dim
    shapes.update({
        "layer_norm.weight": (c,),
        "layer_norm.bias": (c,),
        "post_extract_proj.weight": (e, c),
        "post_extract_proj.bias": (e,),
        "encoder.pos_conv.0.bias": (e,),
        "encoder.pos_conv.0.weight_g": (1, 1, cfg.conv_pos),
        "encoder.pos_conv.0.weight_v": (e, e // cfg.conv_pos_groups, cfg.conv_pos),
    })
    for i in range(cfg.encoder_layers):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (e, e)
            shapes[p + f"self_attn.{proj}.bias"] = (e,)
        shapes.update({
            p + "self_attn_layer_norm.weight": (e,),
            p + "self_attn_layer_norm.bias": (e,),
            p + "fc1.weight": (cfg.ffn_dim, e),
            p + "fc1.bias": (cfg.ffn_dim,),
            p + "fc2.weight": (e, cfg.ffn_dim),
            p + "fc2.bias": (e,),
            p + "final_layer_norm.weight": (e,),
            p + "final_layer_norm.bias": (e,),
        })
    shapes["encoder.layer_norm.weight"] = (e,)
    shapes["encoder.layer_norm.bias"] = (e,)
    for i, n in enumerate(cfg.layer_pred_num):
        if n > 0:
            shapes[f"layer_pred_heads.{i}.weight"] = (cfg.teacher_embed_dim * n, e)
    return shapes


def fixed_params(cfg: ModelConfig) -> int:
    """Parameters the authors count for every subnet: all outside the encoder,
    ``post_extract_proj`` and the prediction heads."""
    return sum(
        math.prod(shape)
        for name, shape in released_layout(cfg).items()
        if not name.startswith(("encoder.", "post_extract_proj", "layer_pred_heads"))
    )


# ----------------------------------------------------------------------------- cutting a subnet


def ffn_rows(embed_dim: int, ffn: int, block: int = SUPERNET_EMBED) -> Tensor:
    """Supernet FFN rows a subnet of width E and FFN size F uses: the leading E rows of each of
    the first ceil(F/E) blocks of 768, the last block only F - (ceil(F/E) - 1) * E rows."""
    blocks = math.ceil(ffn / embed_dim)
    rows = [
        torch.arange(b * block, b * block + min(embed_dim, ffn - b * embed_dim)) for b in range(blocks)
    ]
    return torch.cat(rows)


def pos_conv_weight(weight_g: Tensor, weight_v: Tensor) -> Tensor:
    """Weight norm over dim 2: ``g * v / ||v||``, the norm over all dims but the kernel axis.
    Computed in float32 from the stored values."""
    v = weight_v.float()
    norm = v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
    return v * (weight_g.float() / norm)


def cut_subnet(state: Mapping[str, Tensor], cfg: ModelConfig, subnet: Mapping) -> dict[str, Tensor]:
    """The compact weights of ``subnet`` (a validated subnet dict) from a released state dict.

    Returns the state dict of :class:`SubnetModel` (tensors keep the source dtype, except the
    positional convolution's weight, rebuilt in float32). Unsliced tensors are shared, not copied.
    """
    e = subnet["embed_dim"]
    out: dict[str, Tensor] = {}
    for i in range(len(cfg.conv_layers)):
        src = f"feature_extractor.conv_layers.{i}."
        out[f"feature_extractor.blocks.{i}.conv.weight"] = state[src + "0.weight"]
        if cfg.conv_bias:
            out[f"feature_extractor.blocks.{i}.conv.bias"] = state[src + "0.bias"]
        norm = src + "2.1." if cfg.extractor_mode == "layer_norm" else (src + "2." if i == 0 else None)
        if norm is not None:
            out[f"feature_extractor.blocks.{i}.norm.weight"] = state[norm + "weight"]
            out[f"feature_extractor.blocks.{i}.norm.bias"] = state[norm + "bias"]
    out["layer_norm.weight"] = state["layer_norm.weight"]
    out["layer_norm.bias"] = state["layer_norm.bias"]
    out["post_extract_proj.weight"] = state["post_extract_proj.weight"][:e].contiguous()
    out["post_extract_proj.bias"] = state["post_extract_proj.bias"][:e].contiguous()
    w = pos_conv_weight(state["encoder.pos_conv.0.weight_g"], state["encoder.pos_conv.0.weight_v"])
    out["pos_conv.weight"] = w[:e, : e // cfg.conv_pos_groups].contiguous()
    out["pos_conv.bias"] = state["encoder.pos_conv.0.bias"][:e].contiguous()
    out["encoder_norm.weight"] = state["encoder.layer_norm.weight"][:e].contiguous()
    out["encoder_norm.bias"] = state["encoder.layer_norm.bias"][:e].contiguous()
    for j, i in enumerate(kept_layers(subnet["layer_num"])):
        src, dst = f"encoder.layers.{i}.", f"layers.{j}."
        a, f = subnet["atten_dim"][j], subnet["ffn_embed"][j]
        qkv = [src + f"self_attn.{p}_proj." for p in ("q", "k", "v")]
        out[dst + "qkv.weight"] = torch.cat([state[p + "weight"][:a, :e] for p in qkv])
        out[dst + "qkv.bias"] = torch.cat([state[p + "bias"][:a] for p in qkv])
        out[dst + "out_proj.weight"] = state[src + "self_attn.out_proj.weight"][:e, :a].contiguous()
        out[dst + "out_proj.bias"] = state[src + "self_attn.out_proj.bias"][:e].contiguous()
        rows = ffn_rows(e, f)
        out[dst + "fc1.weight"] = state[src + "fc1.weight"][rows, :e].contiguous()
        out[dst + "fc1.bias"] = state[src + "fc1.bias"][rows].contiguous()
        out[dst + "fc2.weight"] = state[src + "fc2.weight"][:e, rows].contiguous()
        out[dst + "fc2.bias"] = state[src + "fc2.bias"][:e].contiguous()
        for s, d in (("self_attn_layer_norm.", "attn_norm."), ("final_layer_norm.", "ffn_norm.")):
            out[dst + d + "weight"] = state[src + s + "weight"][:e].contiguous()
            out[dst + d + "bias"] = state[src + s + "bias"][:e].contiguous()
    return out


# ----------------------------------------------------------------------------- kernel choices

# On CUDA, attention never goes to cuDNN's backend: it builds a plan per new sequence length
# (~17 ms of host time each), which stalls a pipeline whose batches all have new lengths.
CUDA_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _legacy(read):
    """A legacy TF32 reading, or None where the caller's settings mix the legacy and the
    ``fp32_precision`` APIs so that torch refuses to give one."""
    try:
        return read()
    except RuntimeError:
        return None


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """cuBLAS matmuls and cuDNN convolutions in true float32 (no TensorFloat-32) inside the block;
    the caller's settings are restored on the way out.

    torch keeps two sets of flags (``torch.set_float32_matmul_precision``/``allow_tf32`` and the newer
    ``fp32_precision``) and raises when code reads one that disagrees with the other. Its legacy
    setters update both, so the block sets TF32 off with them: whatever the caller used
    (``allow_tf32 = True``, ``set_float32_matmul_precision("high")``, ``fp32_precision = "tf32"``),
    every reading inside agrees. The CPU's oneDNN flags (``torch.backends.mkldnn``: a caller's "bf16"
    would run float32 matmuls and convolutions in bfloat16) are set to "ieee" too. Both sets are put
    back as they were afterwards."""
    mm, cudnn, mkldnn = torch.backends.cuda.matmul, torch.backends.cudnn, torch.backends.mkldnn
    leaves = [o for o in (mm, cudnn.conv, cudnn.rnn, *(getattr(mkldnn, n, None) for n in ("matmul", "conv", "rnn")))
              if hasattr(o, "fp32_precision")]
    saved = [(o, o.fp32_precision) for o in [cudnn, mkldnn, *leaves] if hasattr(o, "fp32_precision")]
    precision, cudnn_tf32 = _legacy(torch.get_float32_matmul_precision), _legacy(lambda: cudnn.allow_tf32)
    torch.set_float32_matmul_precision("highest")  # CUDA and oneDNN matmuls, legacy and newer flags
    cudnn.allow_tf32 = False  # conv and rnn to "none": inherited, which could be a generic "tf32"
    for o in leaves:
        o.fp32_precision = "ieee"
    try:
        yield
    finally:
        if precision is not None:
            torch.set_float32_matmul_precision(precision)
        if cudnn_tf32 is not None:
            cudnn.allow_tf32 = cudnn_tf32
        for o, value in saved:  # last (backends, then their ops): as the caller had them, also where the sets disagreed
            o.fp32_precision = value


@contextlib.contextmanager
def kernel_choices(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """The kernels a forward pass on ``device`` in ``dtype`` must use: float32 means float32 (TF32
    off, see :func:`no_tf32`); on CUDA, attention limited to :data:`CUDA_ATTENTION`. The CPU's
    own choices are left alone."""
    with contextlib.ExitStack() as stack:
        if dtype == torch.float32:
            stack.enter_context(no_tf32())
        if device.type == "cuda":
            stack.enter_context(sdpa_kernel(CUDA_ATTENTION))
        yield


# ----------------------------------------------------------------------------- modules


MIN_SAMPLES = 400  # the conv extractor's receptive field: fewer samples give no frame
HOP = 320  # samples between its frames: 50 frames per second of 16 kHz audio


def receptive_field(conv_layers: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """(samples one output frame sees, samples between frames): (MIN_SAMPLES, HOP) for the released stack."""
    field, hop = 1, 1
    for _, k, s in conv_layers:
        field += (k - 1) * hop
        hop *= s
    return field, hop


def conv_frames(lengths: Tensor, conv_layers: Sequence[tuple[int, int, int]]) -> Tensor:
    """Exact frame counts: ``n = (n - k) // s + 1`` per block, 0 when too short."""
    n = lengths
    for _, k, s in conv_layers:
        n = torch.div(n - k, s, rounding_mode="floor") + 1
        n = n.clamp(min=0)
    return n


def frame_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B, T) bool, True on real frames. The positions are made from ``lengths`` itself, not with
    ``torch.arange(device=...)``, which a TorchScript trace would fix to the device it was traced on
    (an exported ``.ts`` then failed on any other)."""
    positions = lengths.new_ones(max_len).cumsum(0) - 1
    return positions[None, :] < lengths[:, None]


class ConvBlock(nn.Module):
    """Conv1d, then (optionally) a norm computed in float32, then GELU.

    Activations stay channels-last, (B, T, C): the convolution runs as a 2-D one with height 1 in
    the channels_last memory format, so the layer norm over channels needs no transposed copies.
    """

    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(n_in, n_out, kernel, stride=stride, bias=bias)
        self.norm_kind = norm
        self.norm = nn.LayerNorm(n_out) if norm == "layer" else nn.GroupNorm(n_out, n_out) if norm == "group" else None

    def forward(self, x: Tensor, mask: Tensor | None, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x: (B, T_in, C_in) -> (B, T, C_out); ``mask`` (B, T) True on real frames, for GroupNorm;
        ``stats``: GroupNorm's (mean, var), each (B, 1, C), when computed elsewhere (long files)."""
        x = self.conv_only(x)
        if self.norm_kind == "layer":  # float32 statistics for any input dtype (torch accumulates
            # float16/bfloat16 in float32): the authors' Fp32LayerNorm without its dtype copies
            x = F.layer_norm(x, self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps)
        elif self.norm_kind == "group":
            x = self._group_norm(x, mask, stats)
        return F.gelu(x)

    def conv_only(self, x: Tensor) -> Tensor:
        """The convolution alone: (B, T_in, C_in) -> (B, T, C_out)."""
        x4 = x.transpose(1, 2).unsqueeze(2).contiguous(memory_format=torch.channels_last)  # a view, no copy
        w = self.conv.weight.unsqueeze(2)
        y = F.conv2d(x4, w, self.conv.bias, stride=(1, self.conv.stride[0]))
        return y.squeeze(2).transpose(1, 2)

    @staticmethod
    def group_stats(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-channel (mean, biased var) over time, real frames only: x (B, T, C) -> 2 x (B, 1, C) float32."""
        xf = x.float()
        if mask is None:
            mean = xf.mean(1, keepdim=True)
            return mean, (xf - mean).pow(2).mean(1, keepdim=True)
        m = mask[:, :, None].to(xf.dtype)
        n = m.sum(1, keepdim=True).clamp(min=1)
        mean = (xf * m).sum(1, keepdim=True) / n
        return mean, ((xf - mean).pow(2) * m).sum(1, keepdim=True) / n

    def _group_norm(self, x: Tensor, mask: Tensor | None, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """GroupNorm with one group per channel: statistics over time, real frames only."""
        w, b, eps = self.norm.weight.float(), self.norm.bias.float(), self.norm.eps
        mean, var = self.group_stats(x, mask) if stats is None else stats
        return ((x.float() - mean) * torch.rsqrt(var + eps) * w + b).type_as(x)


class ConvFeatureExtractor(nn.Module):
    """Waveform (B, N) -> conv features (B, T, C), with exact per-utterance frame counts."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = cfg.conv_layers
        blocks, in_dim = [], 1
        for i, (dim, k, s) in enumerate(cfg.conv_layers):
            norm = "layer" if cfg.extractor_mode == "layer_norm" else ("group" if i == 0 else None)
            blocks.append(ConvBlock(in_dim, dim, k, s, cfg.conv_bias, norm))
            in_dim = dim
        self.blocks = nn.ModuleList(blocks)

    def forward(self, wave: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        x = wave.unsqueeze(2)
        n = lengths
        for block, (dim, k, s) in zip(self.blocks, self.layers):
            mask = None
            if n is not None:
                n = conv_frames(n, [(dim, k, s)])
                if block.norm_kind == "group":
                    mask = frame_mask(n, (x.shape[1] - k) // s + 1)
            x = block(x, mask)
        return x, n


class EncoderLayer(nn.Module):
    """One transformer layer of the subnet: fused q/k/v, attention, FFN, post- or pre-norm."""

    def __init__(self, embed_dim: int, heads: int, ffn: int, layer_norm_first: bool):
        super().__init__()
        a = HEAD_DIM * heads
        self.heads = heads
        self.layer_norm_first = layer_norm_first
        self.qkv = nn.Linear(embed_dim, 3 * a)
        self.out_proj = nn.Linear(a, embed_dim)
        self.attn_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn)
        self.fc2 = nn.Linear(ffn, embed_dim)
        self.ffn_norm = nn.LayerNorm(embed_dim)

    def attention(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """x: (B, T, E); attn_mask: (B, 1, 1, T) True on keys to attend, or None."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, HEAD_DIM).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=HEAD_DIM**-0.5)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, self.heads * HEAD_DIM))

    def ffn(self, x: Tensor) -> Tensor:
        # fairseq's gelu casts to float32 and back; torch's gelu computes float16/bfloat16 in float32
        # already (the same numbers, without two copies of the (B, T, F) activations)
        return self.fc2(F.gelu(self.fc1(x)))

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        if self.layer_norm_first:
            x = x + self.attention(self.attn_norm(x), attn_mask)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.attention(x, attn_mask))
        return self.ffn_norm(x + self.ffn(x))


@dataclass
class Output:
    """What :meth:`SubnetModel.forward` returns.

    hidden: the requested hidden states, each (B, T, E); index 0 is the projected conv features.
    last: the final output (B, T, E) when asked for (equals hidden state L unless the model is
        pre-norm, where ``encoder.layer_norm`` is applied on top).
    lengths: (B,) real frames per utterance, or None when the batch had no lengths.
    """

    hidden: dict[int, Tensor] = field(default_factory=dict)
    last: Tensor | None = None
    lengths: Tensor | None = None


class SubnetModel(nn.Module):
    """A single subnet with its own compact weights (see :func:`cut_subnet`)."""

    def __init__(self, cfg: ModelConfig, subnet: Mapping):
        super().__init__()
        self.cfg = cfg
        self.subnet = dict(subnet)
        e = subnet["embed_dim"]
        self.feature_extractor = ConvFeatureExtractor(cfg)
        self.layer_norm = nn.LayerNorm(cfg.conv_dim)
        self.post_extract_proj = nn.Linear(cfg.conv_dim, e)
        self.pos_conv = nn.Conv1d(e, e, cfg.conv_pos, padding=cfg.conv_pos // 2, groups=cfg.conv_pos_groups)
        self.encoder_norm = nn.LayerNorm(e)
        self.layers = nn.ModuleList(
            EncoderLayer(e, h, f, cfg.layer_norm_first)
            for h, f in zip(subnet["heads_num"][: subnet["layer_num"]], subnet["ffn_embed"])
        )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @classmethod
    def from_state(cls, cfg: ModelConfig, subnet: Mapping, state: Mapping[str, Tensor],
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "SubnetModel":
        """Build on the meta device and take ``state`` (moved and cast) as the weights."""
        with torch.device("meta"):
            model = cls(cfg, subnet)
        state = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    def forward(self, wave: Tensor, lengths: Tensor | None = None,
                layers: Sequence[int] | None = None, last: bool = False, always_mask: bool = False) -> Output:
        """wave: (B, N) at 16 kHz (already normalised if the checkpoint asks for it);
        lengths: (B,) real samples per utterance, or None when none is padded (lengths on the CPU
        that pad nothing are taken as None; on CUDA they keep the masked path, as checking would
        wait for the device).
        layers: hidden-state indices to return (0..L), all when None; ``last``: also the final output.
        Only the layers up to the highest one asked for are run, with the kernels of
        :func:`kernel_choices` (float32 stays float32 on CUDA). ``always_mask`` keeps the masked path
        even when nothing is padded (no data-dependent branch: for tracing and export).
        """
        with kernel_choices(wave.device, wave.dtype):
            return self._forward(wave, lengths, layers, last, always_mask)

    def _forward(self, wave: Tensor, lengths: Tensor | None, layers: Sequence[int] | None, last: bool,
                 always_mask: bool = False) -> Output:
        want = list(range(self.num_layers + 1)) if layers is None else sorted(set(layers))
        if want and not 0 <= want[0] <= want[-1] <= self.num_layers:
            raise ValueError(f"hidden-state indices must be in 0..{self.num_layers}, got {list(layers)}")
        if lengths is not None and not always_mask and lengths.device.type == "cpu" and bool((lengths == wave.shape[1]).all()):
            lengths = None  # (asked of CUDA lengths, it would wait for the device: Extractor passes None itself)
        feats, n = self.feature_extractor(wave, lengths)
        return self.encode(self.project(feats), n, want, last)

    def project(self, feats: Tensor) -> Tensor:
        """Conv features (B, T, C) -> hidden state 0 (B, T, E)."""
        return self.post_extract_proj(self.layer_norm(feats))

    def encode(self, x: Tensor, n: Tensor | None, want: Sequence[int], last: bool = False) -> Output:
        """Hidden state 0 (B, T, E) and frame counts (B,) or None -> the hidden states in ``want``
        (sorted indices) and, with ``last``, the final output."""
        out = Output(lengths=n)
        if 0 in want:
            out.hidden[0] = x
        depth = self.num_layers if last else (want[-1] if want else 0)
        if depth == 0:
            return out
        attn_mask = None
        if n is not None:
            real = frame_mask(n, x.shape[1])
            x = x * real[:, :, None].to(x.dtype)
            attn_mask = real[:, None, None, :]
        pos = self.pos_conv(x.transpose(1, 2))
        if self.cfg.conv_pos % 2 == 0:  # an even kernel with padding k/2 gives one frame too many
            pos = pos[:, :, :-1]
        x = x + F.gelu(pos).transpose(1, 2)
        if not self.cfg.layer_norm_first:
            x = self.encoder_norm(x)
        for i, layer in enumerate(self.layers[:depth], start=1):
            x = layer(x, attn_mask)
            if i in want:
                out.hidden[i] = x
        if last:
            out.last = self.encoder_norm(x) if self.cfg.layer_norm_first else x
        return out
