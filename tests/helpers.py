"""Test helpers shared by conftest.py, cli_helpers.py and the test files. Independent of the code
under test: frame counts are written out from SPEC.md, the reference hidden states come from the
authors' model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

SPEECH_DIR = Path(os.environ.get("LHB_SPEECH") or Path(__file__).resolve().parents[2] / "shared" / "data" / "speech").absolute()
"""The example speech: ``../shared/data/speech`` beside the checkout, or ``$LHB_SPEECH``."""


def copy_speech(dst: Path, rels: list[str]) -> Path:
    """Copy the example speech files ``rels`` (paths relative to SPEECH_DIR) into the folder ``dst``,
    keeping their subfolders; returns ``dst``."""
    for rel in rels:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SPEECH_DIR / rel, dst / rel)
    return dst


def frames_for(n: int) -> int:
    """SPEC §3 step 2: frames of an n-sample input through the released conv stack."""
    for k, s in [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2:
        n = (n - k) // s + 1 if n >= k else 0
    return n


def _f64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref| of two tensors or arrays of the same shape."""
    assert tuple(ours.shape) == tuple(ref.shape), (tuple(ours.shape), tuple(ref.shape))
    ours, ref = _f64(ours), _f64(ref)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def authors_hidden_states(model, wave, normalize: bool) -> list[torch.Tensor]:
    """The authors' hidden states of one utterance run alone (model already set to the subnet):
    L+1 tensors (T, E)."""
    w = torch.as_tensor(wave, dtype=torch.float32)
    if normalize:
        w = torch.nn.functional.layer_norm(w, w.shape)
    with torch.no_grad():
        hs, _ = model.extract_features(w[None], ret_hs=True)
    return [h[0] for h in hs]


def authors_states(model, wave, normalize: bool) -> np.ndarray:
    """:func:`authors_hidden_states` stacked: (L+1, T, E) float32 numpy."""
    return torch.stack(authors_hidden_states(model, wave, normalize)).float().numpy()


# ----------------------------------------------------------------------------- TF32 settings


def _reading(read):
    try:
        return read()
    except RuntimeError:  # torch refuses a legacy reading that the newer flags contradict
        return "refused"


def tf32_flags() -> dict:
    """Every reduced-precision float32 setting torch lets code read (TF32 on CUDA, bf16/tf32 in oneDNN
    on the CPU), legacy and ``fp32_precision`` alike."""
    mm, cudnn, mkldnn = torch.backends.cuda.matmul, torch.backends.cudnn, torch.backends.mkldnn
    return {"precision": _reading(torch.get_float32_matmul_precision), "mm.allow_tf32": _reading(lambda: mm.allow_tf32),
            "cudnn.allow_tf32": _reading(lambda: cudnn.allow_tf32), "mm": mm.fp32_precision, "cudnn": cudnn.fp32_precision,
            "conv": cudnn.conv.fp32_precision, "rnn": cudnn.rnn.fp32_precision, "generic": torch.backends.fp32_precision,
            "mkldnn": mkldnn.fp32_precision, "mkldnn.matmul": mkldnn.matmul.fp32_precision,
            "mkldnn.conv": mkldnn.conv.fp32_precision, "mkldnn.rnn": mkldnn.rnn.fp32_precision}


FLOAT32_FLAGS = {"precision": "highest", "mm.allow_tf32": False, "cudnn.allow_tf32": False, "mm": "ieee", "conv": "ieee", "rnn": "ieee",
                 "mkldnn.matmul": "ieee", "mkldnn.conv": "ieee", "mkldnn.rnn": "ieee"}
"""What a float32 forward must see: TF32 off, and no reading refused (torch raises where code reads a
legacy flag that the newer ones contradict; cuBLAS and the profiler read them)."""


def _tf32_new_api():
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"


def _tf32_legacy():
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def _bf16_onednn():
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    torch.backends.mkldnn.conv.fp32_precision = "bf16"


USER_TF32 = {"torch_defaults": lambda: None, "fp32_precision": _tf32_new_api, "allow_tf32": _tf32_legacy, "onednn_bf16": _bf16_onednn,
             "matmul_precision_high": lambda: torch.set_float32_matmul_precision("high"),
             "generic": lambda: setattr(torch.backends, "fp32_precision", "tf32")}
