"""Ship one subnet as a file that runs without this package: ONNX (ONNX Runtime, any language) or
TorchScript (``torch.jit.load``, Python or C++).

The exported graph takes a padded batch of raw 16 kHz waveforms and their lengths and returns the
requested hidden states and the frame counts; the checkpoint's per-utterance normalisation (over
each utterance's real samples only) is inside the graph, so the caller does nothing else. Batch size
and length are dynamic. What the file holds (subnet, params, layers, normalize, source checkpoint,
package version) is stored in it: ONNX ``metadata_props``, TorchScript ``extra/lighthubert.json``.

onnx, onnxruntime and onnxscript are an optional extra (``pip install 'lighthubert[onnx]'``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import Checkpoint, CheckpointError, check_export_target, export_subnet
from .files import write_atomic, write_bytes_atomic
from .defaults import EXPORT_DTYPE, EXPORT_DTYPES
from .errors import LightHubertError, SettingError
from .extractor import TORCH_DTYPES, FINAL, check_geometry, resolve_layers
from .model import MIN_SAMPLES, SubnetModel, frame_mask

FORMATS = {".onnx": "onnx", ".ts": "torchscript", ".pt": "checkpoint"}
"""Export formats by file suffix."""
INPUTS = ("waveform", "lengths")
OUTPUTS = ("hidden_states", "frames")
META_FILE = "lighthubert.json"
"""Name of the metadata entry in a TorchScript file (``_extra_files``)."""
DEFAULT_OPSET = 18
EXTRA_HINT = "pip install 'lighthubert[onnx]' (or: pip install onnx onnxruntime onnxscript)"


class ExportError(LightHubertError):
    """An export or exported file that cannot be made or read; the message is one line."""


def require_onnx(what: str = "ONNX export", modules: tuple[str, ...] = ("onnx", "onnxscript")) -> None:
    """Raise :class:`ExportError` with the install line when a module of the ``onnx`` extra is missing."""
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            raise ExportError(f"{what} needs the optional 'onnx' extra ({name} is missing): {EXTRA_HINT}") from None


def normalize_padded(wave: Tensor, lengths: Tensor, eps: float = 1e-5) -> Tensor:
    """Each row standardised over its first ``lengths[b]`` samples (``F.layer_norm`` over the
    utterance, as the checkpoint asks), padding set to 0. wave: (B, N) float32; lengths: (B,).

    The mean and variance are float64 sums (ONNX and TorchScript have no row-wise ``layer_norm`` over
    different lengths): float32 sums rounded a DC offset's mean by ~1e-7 of it, a constant shift the
    layer-norm conv extractor amplifies on quiet stretches (5e-4 from ``lighthubert.load`` with ONNX
    Runtime at an offset of 0.1)."""
    real = frame_mask(lengths, wave.shape[1]).to(torch.float64)
    n = lengths.to(torch.float64).clamp(min=1.0)[:, None]  # a row of no samples: zeros, not 0/0 = NaN
    w = wave.to(torch.float64)
    mean = (w * real).sum(1, keepdim=True) / n
    centred = (w - mean) * real
    var = centred.pow(2).sum(1, keepdim=True) / n
    return (centred * torch.rsqrt(var + eps)).to(wave.dtype)


class Deployable(nn.Module):
    """The traceable forward of one subnet, from raw waveforms.

    forward(waveform (B, N) float32, lengths (B,) int64) -> (hidden (B, K, T, E) in the model dtype,
    frames (B,) int64), K = len(layers); frames beyond ``frames[b]`` are padding.
    """

    def __init__(self, model: SubnetModel, layers: list[int], normalize: bool):
        super().__init__()
        self.model = model
        self.layers = list(layers)
        self.normalize = normalize
        # as Extractor.run: FINAL (only `last` of a pre-norm model) is the output after encoder_norm
        self.final = FINAL in self.layers
        self.dtype = model.post_extract_proj.weight.dtype

    def forward(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        # one length per row: each indexes the other by its row numbers, so any other count is an index
        # error in the graph (a single length was spread over every row by ONNX Runtime's broadcasting,
        # and gave one row in TorchScript; a reshape is dropped from the ONNX graph as a no-op)
        rows = torch.ones_like(waveform[:, 0], dtype=torch.long).cumsum(0) - 1
        waveform = waveform[torch.ones_like(lengths).cumsum(0) - 1]
        lengths = lengths[rows]
        # a length beyond the samples given counts only those (frames never exceeds hidden's T)
        lengths = torch.minimum(lengths, lengths.new_full(lengths.shape, waveform.shape[1]))
        wave = waveform.float()
        if self.normalize:
            wave = normalize_padded(wave, lengths)
        else:
            wave = wave * frame_mask(lengths, wave.shape[1]).to(wave.dtype)
        out = self.model(wave.to(self.dtype), lengths, layers=[i for i in self.layers if i != FINAL],
                         last=self.final, always_mask=True)
        hidden = torch.stack([out.last if i == FINAL else out.hidden[i] for i in self.layers], 1)
        return hidden, out.lengths


def metadata(ckpt: Checkpoint, subnet: dict, layers: list[int], dtype: torch.dtype, fmt: str) -> dict[str, str]:
    """What an exported file says about itself (all values strings, JSON where structured)."""
    from . import __version__

    return {
        "lighthubert_version": __version__,
        "torch_version": torch.__version__,
        "format": fmt,
        "subnet": json.dumps(subnet, sort_keys=True),
        "supernet": ckpt.space.name,
        "params": str(ckpt.params(subnet)),
        "layers": json.dumps(layers),
        "num_layers": str(subnet["layer_num"]),
        "embed_dim": str(subnet["embed_dim"]),
        "normalize": json.dumps(ckpt.normalize),
        "normalization": ("in the graph: each utterance standardised over its real samples (eps 1e-5)"
                          if ckpt.normalize else "none (the checkpoint does not normalise)"),
        "sample_rate": str(ckpt.sample_rate),
        "dtype": str(dtype).replace("torch.", ""),
        "extractor_mode": ckpt.cfg.extractor_mode,
        "source": ckpt.name,
        "source_sha256": ckpt.sha256 or ckpt.meta.get("source_sha256") or "",
        "random_weights": json.dumps(ckpt.random),
        "inputs": ("waveform (batch, samples) float32 raw 16 kHz audio, zero-padded; lengths (batch,) int64 real "
                   f"samples, each {MIN_SAMPLES} (25 ms) to samples"),
        "outputs": "hidden_states (batch, layers, frames, embed_dim); frames (batch,) int64 real frames",
    }


def _example(device: Any = "cpu", batch: int = 2, samples: int = 16000) -> tuple[Tensor, Tensor]:
    """A traced example: two utterances of different lengths (so the padded path is the one traced)."""
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(batch, samples, generator=g) * 0.1
    lengths = torch.tensor([samples] + [samples * 2 // 3] * (batch - 1), dtype=torch.int64)
    return wave.to(device), lengths.to(device)


def check_export(path: str | os.PathLike, layers: Any = None, dtype: str | None = None) -> str:
    """The export format of ``path`` (``onnx``, ``torchscript``, ``checkpoint``), checked before any
    work: a known suffix, options that apply to it, the onnx extra installed for ``.onnx``."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ExportError(f"{path}: unknown export format {path.suffix!r}; use .onnx, .ts (TorchScript) or .pt (checkpoint)")
    if fmt == "checkpoint":
        if layers is not None or dtype not in (None, EXPORT_DTYPE):
            raise SettingError(".pt exports the subnet's weights as stored; layers and an export dtype (--layers and "
                               "--export-dtype) are for .onnx and .ts")
        return fmt
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise SettingError(f"export dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    if fmt == "onnx":
        require_onnx()
    return fmt


def export(ckpt: Checkpoint, subnet: Any, path: str | os.PathLike, layers: Any = None,
           dtype: str | None = None, opset: int = DEFAULT_OPSET, *, overwrite: bool = False) -> Path:
    """Write ``subnet`` of ``ckpt`` to ``path``, the format by suffix: ``.onnx``, ``.ts`` (TorchScript)
    or ``.pt`` (a compact checkpoint for this package, see :func:`export_subnet`).

    layers: hidden states to output (``last`` when None, ``all``, or indices as in ``resolve_layers``);
    dtype: ``float32`` (default) or ``float16`` (weights and compute; for GPUs). An existing file is
    replaced only with ``overwrite``, ``ckpt``'s own file never. Raises :class:`ExportError` (or
    ``ValueError`` for a bad option) with one line."""
    path = Path(path)
    fmt = check_export(path, layers, dtype)
    try:
        if fmt == "checkpoint":
            return export_subnet(ckpt, subnet, path, overwrite=overwrite)  # which checks the target
        check_export_target(ckpt, path, overwrite)
        check_geometry(ckpt)  # the file's bounds (inputs of at least MIN_SAMPLES) assume it
    except CheckpointError as err:
        raise ExportError(str(err)) from None
    tdtype = TORCH_DTYPES[dtype or EXPORT_DTYPE]
    sub = ckpt.resolve_subnet(subnet)
    idx = resolve_layers(layers, sub["layer_num"], ckpt.cfg.layer_norm_first)
    # TorchScript traces fix the device of the tensors they create: a float16 (GPU) file is traced on CUDA
    device = "cuda" if fmt == "torchscript" and tdtype == torch.float16 and torch.cuda.is_available() else "cpu"
    module = Deployable(ckpt.model(sub, device=device, dtype=tdtype), idx, ckpt.normalize).eval()
    meta = metadata(ckpt, sub, idx, tdtype, fmt)
    if fmt == "torchscript":
        meta["device"] = device
    with _quiet():
        if fmt == "onnx":
            return write_atomic(path, lambda tmp: _write_onnx(module, str(tmp), meta, opset))
        return write_bytes_atomic(path, lambda buf: _write_torchscript(module, buf, meta))


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' chatter (deprecation notices, tracer hints, 'torchvision is not
    installed'): the result is checked by tests, not by those messages."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _write_torchscript(module: Deployable, buf: io.BytesIO, meta: dict[str, str]) -> None:
    """Into memory: torch.jit.save aborts the process when a write to a file fails (a full disk)."""
    with torch.no_grad():
        traced = torch.jit.trace(module, _example(meta["device"]), check_trace=False, strict=False)
    torch.jit.save(traced, buf, _extra_files={META_FILE: json.dumps(meta)})


def _write_onnx(module: Deployable, path: str, meta: dict[str, str], opset: int) -> None:
    import onnx

    batch, samples = torch.export.Dim("batch", min=1), torch.export.Dim("samples", min=MIN_SAMPLES)
    with torch.no_grad():
        program = torch.onnx.export(
            module, _example(), dynamo=True, opset_version=opset, input_names=list(INPUTS),
            output_names=list(OUTPUTS), dynamic_shapes=({0: batch, 1: samples}, {0: batch}),
            optimize=True, verbose=False,
        )
    program.save(path)
    model = onnx.load(path)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "frames"  # not the exporter's formula
    model.producer_name, model.producer_version = "lighthubert", meta["lighthubert_version"]
    onnx.save(model, path)


def file_format(path: str | os.PathLike) -> str | None:
    """``onnx`` or ``torchscript`` when ``path`` is such a file (by suffix, or for TorchScript by its
    archive layout), else None."""
    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix.lower() == ".onnx":
        return "onnx"
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    return "torchscript" if any(n.split("/", 1)[-1] == "constants.pkl" for n in names) else None


def describe(path: str | os.PathLike) -> dict:
    """What an exported ONNX or TorchScript file holds: its metadata (subnet, params, layers...),
    inputs and outputs (name, type, shape; symbolic axes by name), the ONNX opset, the file size."""
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p}: {'is a folder' if p.is_dir() else 'no such file'}, not an exported ONNX or TorchScript file")
    fmt = file_format(p)
    if fmt == "onnx":
        info = _describe_onnx(p)
    elif fmt == "torchscript":
        info = _describe_torchscript(p)
    else:
        raise ExportError(f"{p}: not an exported ONNX or TorchScript file")
    meta = info.pop("metadata")
    for key in ("subnet", "layers", "normalize", "random_weights"):
        if key in meta:
            with contextlib.suppress(ValueError):
                meta[key] = json.loads(meta[key])
    for key in ("params", "num_layers", "embed_dim", "sample_rate"):
        if str(meta.get(key, "")).isdigit():
            meta[key] = int(meta[key])
    if fmt == "torchscript":  # a trace keeps no shapes; the metadata says the two fixed ones, as ONNX's graph does
        shape = info["outputs"][0]["shape"]
        if isinstance(meta.get("layers"), list):
            shape[1] = len(meta["layers"])
        if isinstance(meta.get("embed_dim"), int):
            shape[3] = meta["embed_dim"]
    return {"file": str(p), "format": fmt, "file_size": p.stat().st_size, **info, "metadata": meta}


def _describe_onnx(path: Path) -> dict:
    require_onnx(f"{path}: reading an ONNX file", ("onnx",))
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises its own DecodeError
        raise ExportError(f"{path}: not a readable ONNX file ({type(err).__name__})") from None

    def io(values) -> list[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims})
        return out

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "inputs": io(model.graph.input), "outputs": io(model.graph.output),
            "metadata": {p.key: p.value for p in model.metadata_props}}


def _describe_torchscript(path: Path) -> dict:
    extra = {META_FILE: ""}
    try:
        with _quiet():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, OSError, ValueError) as err:
        raise ExportError(f"{path}: not a readable TorchScript file ({str(err).strip().splitlines()[0][:160]})") from None
    try:
        meta = json.loads(extra[META_FILE]) if extra[META_FILE] else {}
    except ValueError:
        meta = {}
    dtype = meta.get("dtype", "float32")
    return {"opset": None, "producer": "torch.jit.trace",
            "inputs": [{"name": "waveform", "dtype": "float32", "shape": ["batch", "samples"]},
                       {"name": "lengths", "dtype": "int64", "shape": ["batch"]}],
            "outputs": [{"name": "hidden_states", "dtype": dtype, "shape": ["batch", "layers", "frames", "embed_dim"]},
                        {"name": "frames", "dtype": "int64", "shape": ["batch"]}],
            "metadata": meta}
