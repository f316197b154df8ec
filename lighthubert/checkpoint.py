"""Checkpoints: the released files (by path or by name), random ones in the released layout, and
compact exported subnets. Loading never runs pickle code unless the caller explicitly trusts the file.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import math
import os
import pickle
import re
import socket
import stat
import threading
import time
import urllib.parse
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from .defaults import SEED
from .errors import LightHubertError, LightHubertWarning, SettingError, kind_of
from .fairseq_cfg import HUBERT_TRAINING_EXTRA, TRAINING_DEFAULTS, is_norm
from .files import target_problem, write_bytes_atomic
from .inputs import display_path, is_text
from .model import ConfigError, ModelConfig, SubnetModel, config_flag, cut_subnet, fixed_params, released_layout
from .space import SPACES, SearchSpace, SubnetError, count_params, get_space, subnet_from_text

HUB_REPO = "mechanicalsea/lighthubert"
HUB_ENV = "HF_ENDPOINT"
CACHE_ENV = "LIGHTHUBERT_CACHE"
REVISION_ENV = "LIGHTHUBERT_REVISION"
WAIT_ENV = "LIGHTHUBERT_DOWNLOAD_WAIT"
DEFAULT_HUB = "https://huggingface.co"
TRUST_HINT = ("If you trust the file, pass --trust-checkpoint (in Python: trust=True to load or load_checkpoint, "
              "trust_checkpoint=True to extract).")
RELEASED = {
    "base": "lighthubert_base.pt",
    "small": "lighthubert_small.pt",
    "stage1": "lighthubert_stage1.pt",
}
KINDS = ("hubert_pruner", "student_hubert", "lighthubert_subnet")
SUBNET_KIND = "lighthubert_subnet"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_CHECKPOINT_BYTES = 8 << 30
"""The largest checkpoint file read, far above any released one (a bound, so that no file is read without end)."""
MAX_SEED = 2**63 - 1


def check_seed(seed: int) -> None:
    """:class:`SettingError` (setting ``seed``) unless ``seed`` is a whole number from 0 to 2^63-1, the
    range of ``lhb extract --seed`` (torch and numpy said only "expected non-negative integer" or
    "Overflow when unpacking long long", or took a negative seed silently)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise SettingError(f"{seed} is not a whole number from 0 to 2^63-1", "seed")


class CheckpointError(LightHubertError):
    """A checkpoint that cannot be had or used; the message names the file and the reason."""


class CheckpointNameError(CheckpointError, SettingError):
    """A checkpoint named in a form no checkpoint has (an empty string, ``random:tiny``, a bad seed):
    the caller's value is wrong, so a command-line tool reports it as a usage error."""


def url_for(name: str) -> str:
    """Where a released checkpoint can be downloaded by hand (``HF_ENDPOINT`` honoured)."""
    hub = os.environ.get(HUB_ENV, DEFAULT_HUB).rstrip("/")
    revision = os.environ.get(REVISION_ENV) or "main"
    return f"{hub}/{HUB_REPO}/resolve/{revision}/{RELEASED[name]}"


def cache_dir() -> Path:
    """The folder searched first for released checkpoints (files placed by hand, or downloaded by
    lighthubert 0.1): ``$LIGHTHUBERT_CACHE``, else ``~/.cache/lighthubert``. When
    ``LIGHTHUBERT_CACHE`` is set, downloads go there too; otherwise into the Hugging Face cache
    (``HF_HOME``, ``HF_HUB_CACHE``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = Path.home() / ".cache"
        except RuntimeError:  # no HOME and no passwd entry (a container's user): was an internal error
            raise CheckpointError(f"cannot find a folder for released checkpoints: no home folder (HOME is unset); "
                                  f"set {CACHE_ENV} to a folder (or give the checkpoint's path)") from None
    return Path(base) / "lighthubert"


def _local_rank() -> int:
    """This process's rank on its node under torchrun or srun (0 otherwise)."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def fetch(name: str, progress: bool = True) -> Path:
    """The local file of a released checkpoint, downloaded once from the Hugging Face hub with
    ``huggingface_hub`` (``HF_HOME``, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_TOKEN`` honoured;
    resumed and locked by it). ``LIGHTHUBERT_REVISION`` picks a hub revision. Under torchrun or srun
    only local rank 0 downloads; the others wait for the file (``LIGHTHUBERT_DOWNLOAD_WAIT``
    seconds, default 3600)."""
    filename = RELEASED[name]
    folder = cache_dir()
    try:
        exists = folder.exists()
    except OSError as err:  # a home folder this user may not enter: was "/root/.cache/lighthubert: Permission denied"
        raise CheckpointError(f"could not look for the {name!r} checkpoint in {folder}: {err.strerror}; set "
                              f"{CACHE_ENV} to a folder you can read (or give the checkpoint's path)") from None
    if exists and not folder.is_dir():
        source = f"{CACHE_ENV}={folder}" if os.environ.get(CACHE_ENV) else str(folder)
        raise CheckpointError(f"could not look for the {name!r} checkpoint: {source} is a file, not a folder; "
                              f"point {CACHE_ENV} at a folder (or give the checkpoint's path instead of {name!r})")
    placed = folder / filename
    if placed.is_file():
        return placed
    hint = (f"Download it by hand from {url_for(name)} and give its path instead of {name!r} "
            f"(lhb: -c /path/to/{filename}; Python: lighthubert.load('/path/to/{filename}')), "
            f"or put it in {folder} (set {CACHE_ENV} to use another folder).")
    try:
        import huggingface_hub
        from huggingface_hub import errors as hub_errors
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:
        raise CheckpointError(f"{name}: downloading needs huggingface_hub (pip install huggingface_hub). {hint}") from None
    if not progress:
        disable_progress_bars()
    args = dict(repo_id=HUB_REPO, filename=filename, revision=os.environ.get(REVISION_ENV) or None,
                endpoint=os.environ.get(HUB_ENV) or None)
    if os.environ.get(CACHE_ENV):
        args["local_dir"] = folder

    def cached() -> Path | None:
        if placed.is_file():
            return placed
        try:
            return Path(huggingface_hub.hf_hub_download(**args, local_files_only=True))
        except (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled, FileNotFoundError, OSError):
            return None

    if (found := cached()) is not None:  # released files never change: no network round trip
        return found
    if _local_rank() != 0:  # local rank 0 downloads; wait for its file
        deadline = time.monotonic() + float(os.environ.get(WAIT_ENV) or 3600)
        while time.monotonic() < deadline:
            time.sleep(1.0)
            if (found := cached()) is not None:
                return found
        raise CheckpointError(f"{name}: waited for local rank 0 to download {filename}, in vain. {hint}")
    if not _truthy(os.environ.get("HF_HUB_OFFLINE")) and (why := _unresolvable(args["endpoint"] or DEFAULT_HUB)):
        raise CheckpointError(f"could not download the {name!r} checkpoint ({filename} from {HUB_REPO}): {why}. {hint}")
    try:
        return Path(huggingface_hub.hf_hub_download(**args))
    except (hub_errors.OfflineModeIsEnabled, hub_errors.LocalEntryNotFoundError) as err:
        offline = isinstance(err, hub_errors.OfflineModeIsEnabled) or _truthy(os.environ.get("HF_HUB_OFFLINE"))
        why = ("offline mode (HF_HUB_OFFLINE) is on and the file is not in the cache" if offline
               else "the hub could not be reached and the file is not in the cache")
        raise CheckpointError(f"could not download the {name!r} checkpoint ({filename} from {HUB_REPO}): {why}. {hint}") from None
    except hub_errors.GatedRepoError:
        raise CheckpointError(f"could not download the {name!r} checkpoint: {HUB_REPO} needs a token (HF_TOKEN). {hint}") from None
    except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError, hub_errors.EntryNotFoundError) as err:
        raise CheckpointError(f"could not download the {name!r} checkpoint: not found on the hub ({_first_line(err)}). {hint}") from None
    except (hub_errors.HfHubHTTPError, OSError, ValueError) as err:
        raise CheckpointError(f"could not download the {name!r} checkpoint ({filename} from {HUB_REPO}): {_first_line(err)}. {hint}") from None


def _unresolvable(endpoint: str) -> str | None:
    """Why the hub at ``endpoint`` cannot be reached at all: its host name is unknown to the resolver
    and no proxy would look it up instead. The hub client retries such a failure for about 25 s
    before it gives up; a name that does not exist is said at once. None when the name resolves, when
    the failure may pass (a resolver that did not answer: the hub client's retries may get through),
    for an address given as such, or when a proxy is used for the host (the hub client then decides)."""
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname
    if not host:
        return None
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return None  # an address, not a name (an IPv6 zone included)
    except ValueError:
        pass
    proxies = urllib.request.getproxies()
    if (proxies.get(url.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass_environment(host):
        return None
    try:
        socket.getaddrinfo(host, url.port or (443 if url.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        if err.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return f"the hub's host {host} could not be resolved ({err.strerror}; offline?)"
        return None
    except (OSError, UnicodeError, ValueError):
        return None
    return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0][:200] if text else type(err).__name__).rstrip(".")


# ----------------------------------------------------------------------------- safe unpickling


def _numpy_globals() -> list:
    """The harmless numpy globals fairseq checkpoints hold (scalars in ``extra_state``, dtypes),
    under both their numpy 1 and numpy 2 module names."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 names it _core (np.core warns)
    scalar = core.multiarray.scalar
    allowed: list = [np.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return allowed


def _numpy_array_globals() -> list:
    """What a pickled numpy array needs beyond :func:`_numpy_globals` (an array in ``extra_state``):
    numpy's own array rebuilder, which runs no code; allowed in this package's loader only."""
    core = getattr(np, "_core", None) or np.core
    rebuild = core.multiarray._reconstruct
    return [np.ndarray, (rebuild, "numpy.core.multiarray._reconstruct"), (rebuild, "numpy._core.multiarray._reconstruct")]


# Importing lighthubert lets a plain torch.load(path) (weights_only=True by default) open the released
# files, as the authors' README does: only numpy scalars and dtypes are added, which run no code.
torch.serialization.add_safe_globals(_numpy_globals())


TORCH_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[2:]
"""How torch.save's legacy (non-zip) format begins, after the pickle protocol byte(s): its magic number."""


HEAD_BYTES = 4096
"""What :func:`_check_head` reads of a file: enough to refuse what is no checkpoint before the rest is
read (a 3 GiB features file passed as -c took 3.7 GB of memory to be refused)."""


def _check_head(head: bytes, where: str) -> None:
    """Refuse, from its first :data:`HEAD_BYTES`, a file that is neither torch.save's zip nor a binary pickle."""
    if head[:8] == HDF5_MAGIC:
        raise CheckpointError(f"{where}: this is an HDF5 file (a features file?), not a checkpoint")
    if not head:
        raise CheckpointError(f"{where}: the file is empty")
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # neither torch.save's zip nor a (legacy) binary pickle
        if not head.strip(b"\0"):
            raise CheckpointError(f"{where}: not a PyTorch checkpoint: only zero bytes at its start (a file made but never "
                                  "written, or a copy that failed?)")
        if head.lstrip()[:1] in (b"{", b"[") and b'"embed_dim"' in head:
            raise CheckpointError(f"{where}: a subnet JSON file, not a checkpoint (lhb subnet --subnet {where} describes "
                                  "it; lhb extract takes it as --subnet, with the supernet as -c)")
        if str(where).lower().endswith(".onnx"):
            raise CheckpointError(f"{where}: an ONNX export (lhb info describes it; ONNX Runtime runs it), not a "
                                  "checkpoint; -c takes a .pt file (lhb subnet --export NAME.pt writes one of a subnet)")
        what = "a text file" if is_text(head) else "neither a zip archive nor a pickle"
        raise CheckpointError(f"{where}: not a PyTorch checkpoint ({what}); give a .pt file written by torch.save")


def _read_pickle(data: bytes, where: str, trust: bool) -> Any:
    """The object in ``data``, a file's bytes whose head :func:`_read_regular` has checked."""
    zipped = data[:4] == b"PK\x03\x04"
    if zipped and not zipfile.is_zipfile(io.BytesIO(data)):
        raise CheckpointError(f"{where}: truncated checkpoint: a zip archive (torch.save's format) without its end "
                              f"({len(data):,} bytes); download or copy it again")
    if not zipped and TORCH_LEGACY_MAGIC not in data[:32]:  # pickle.dump's file: torch.load cannot read it at all
        raise CheckpointError(f"{where}: not a PyTorch checkpoint (a plain pickle, not a file written by torch.save)")
    try:
        if trust:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        # Added, never removed: the safe_globals context manager would take away on exit what importing
        # lighthubert registered, and a later plain torch.load of a released file would fail.
        torch.serialization.add_safe_globals(_numpy_globals())
        with torch.serialization.safe_globals(_numpy_array_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # said below if it matters
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        protocol = _pickle_protocol(data, zipped)
        if "Unsupported operand" in text:
            how = (f"written by torch.save with pickle protocol {protocol}, which the safe loader cannot read (it reads "
                   "protocol 2, torch.save's default)" if protocol > 2 else
                   f"its pickle uses an operation the safe loader cannot read ({_reason(text)})")
            raise CheckpointError(f"{where}: {how}. {TRUST_HINT}") from None
        if "Unsupported global" in text or "GLOBAL" in text or "not an allowed global" in text:
            named = re.search(r"GLOBAL ([\w.]+)", text)
            what = named.group(1)[:120] if named else "code"
            why = ("how older fairseq files hold their settings, as 'args'; LightHuBERT's released files hold a 'cfg' "
                   "dict" if what == "argparse.Namespace" else "which a checkpoint never needs")
            raise CheckpointError(f"{where}: refused: unpickling it would call {what}, {why}. {TRUST_HINT}") from None
        raise CheckpointError(f"{where}: not a PyTorch checkpoint ({_reason(text)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as err:
        text = _reason(str(err)) or type(err).__name__
        if "zip" in text.lower() or isinstance(err, (EOFError, zipfile.BadZipFile)):
            raise CheckpointError(f"{where}: truncated or corrupt checkpoint ({text})") from None
        raise CheckpointError(f"{where}: not a PyTorch checkpoint ({text})") from None
    except Exception as err:  # a trusted pickle may raise anything
        raise CheckpointError(f"{where}: cannot be loaded ({type(err).__name__}: {_reason(str(err))})") from None


def _pickle_protocol(data: bytes, zipped: bool) -> int:
    """The pickle protocol of a torch.save file: its first record's (``data.pkl`` in the zip format)."""
    head = data[:2]
    if zipped:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                head = z.open(name).read(2) if name else b""
        except (zipfile.BadZipFile, OSError, RuntimeError, ValueError):
            head = b""
    return head[1] if len(head) == 2 and head[0] == 0x80 else 0


def _reason(text: str) -> str:
    """torch's message, without its advice to load with weights_only=False (unsafe, and wrong for
    a file that is not a checkpoint at all); long ones cut after a whole sentence or word."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and "weights_only" not in ln
             and "Weights only load failed" not in ln and "trust the source" not in ln]
    if not lines:
        return "unreadable"
    # torch's C++ checks prefix where they failed: "[enforce fail at inline_container.cc:180] . file in ..."
    line = re.sub(r"^\[enforce fail at [^\]]*\][\s.]*", "", lines[0]) or lines[0]
    if len(line) <= 160:
        return line
    end = line.rfind(". ", 0, 160)
    return line[: end + 1] if end > 40 else line[:160].rsplit(" ", 1)[0] + " ..."


# ----------------------------------------------------------------------------- the checkpoint


@dataclass
class Checkpoint:
    """A loaded checkpoint: its config, weights and what it is."""

    source: str
    kind: str
    space: SearchSpace
    cfg: ModelConfig
    state: dict[str, Tensor] = field(repr=False)
    normalize: bool = True
    sample_rate: int = 16000
    random: bool = False
    sha256: str | None = None
    path: Path | None = None
    subnet: dict | None = None
    """For an exported subnet file: its one subnet."""
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """A short label, marked when the weights are random: valid one-line text (a file name's
        undecodable bytes written %XX, as h5py and ONNX need to store it)."""
        label = display_path(self.path.name if self.path else self.source)
        return f"{label} (RANDOM WEIGHTS)" if self.random else label

    @property
    def default_subnet(self) -> dict:
        if self.subnet is not None:
            return dict(self.subnet)
        if self.kind == "student_hubert":
            return SPACES["base"].max_subnet
        return self.space.default_subnet

    @property
    def fixed_params(self) -> int:
        return self.meta.get("fixed_params", fixed_params(self.cfg))

    @property
    def count_kwargs(self) -> dict[str, int]:
        """What a subnet's parameter count takes from this checkpoint: keyword arguments of
        :func:`~lighthubert.space.count_params` and :func:`~lighthubert.space.best_under_budget`."""
        return {"fixed": self.fixed_params, **self.cfg.conv_sizes}

    def params(self, subnet: Mapping) -> int:
        """The authors' parameter count of a subnet of this checkpoint."""
        return count_params(subnet, **self.count_kwargs)

    def resolve_subnet(self, spec: Any = None) -> dict:
        """A validated subnet from None (the default), a preset name (default, max, min), a dict,
        inline JSON or the path of a JSON file. ``"default"`` is this checkpoint's default subnet, as
        None is (for Stage 1 the Base max, not the Base space's default)."""
        if isinstance(spec, str) and spec.strip() == "default":
            spec = None
        if not (spec is None or isinstance(spec, (Mapping, str, os.PathLike))):  # else its repr was read as JSON
            got = (f"a {type(spec).__name__} of {len(spec)}: give one of them" if isinstance(spec, (list, tuple))
                   else kind_of(spec))
            raise SubnetError(f"a subnet is a dict, a preset name (default, max, min), inline JSON or a JSON file's path; "
                              f"got {got}")
        if self.subnet is not None:
            if spec is None:
                return dict(self.subnet)
            sub = spec if isinstance(spec, Mapping) else subnet_from_text(str(spec), self.space)
            if self.space.validate(sub, strict=False) != self.subnet:
                s = self.subnet
                raise SubnetError(f"{self.source} is an exported subnet and holds only its own ({s['layer_num']} layers, "
                                  f"width {s['embed_dim']}, {self.params(s):,} params): leave out the subnet, or "
                                  "give the supernet checkpoint it was cut from")
            return dict(self.subnet)
        if spec is None:
            return self.default_subnet
        if isinstance(spec, Mapping):
            return self.space.validate(spec)
        return subnet_from_text(str(spec), self.space)

    def model(self, subnet: Any = None, device: Any = "cpu", dtype: torch.dtype | None = torch.float32) -> SubnetModel:
        """A :class:`SubnetModel` with the subnet's weights cut once, on ``device`` in ``dtype``."""
        sub = self.resolve_subnet(subnet)
        if self.subnet is not None:
            state = self.state
        else:
            state = cut_subnet(self.state, self.cfg, sub)
        return SubnetModel.from_state(self.cfg, sub, state, device=device, dtype=dtype)

    def describe(self) -> dict[str, Any]:
        """What ``lhb info`` shows, as plain JSON-able values: kind, space, dims, modes, weight
        dtype, default subnet and its parameters, the range of subnet sizes, file size and sha256."""
        dtypes = sorted({str(t.dtype).replace("torch.", "") for t in self.state.values() if hasattr(t, "dtype")})
        default = self.default_subnet
        one = self.subnet is not None
        data = {
            "checkpoint": self.name,
            "kind": kind_label(self),
            "model_name": self.kind,
            "random_weights": self.random,
            "supernet": self.space.name,
            "supernet_dims": {"layers": self.cfg.encoder_layers, "embed_dim": self.cfg.embed_dim,
                              "ffn_embed_dim": self.cfg.ffn_dim, "heads": self.cfg.heads},
            "extractor_mode": self.cfg.extractor_mode,
            "layer_norm_first": self.cfg.layer_norm_first,
            "normalize": self.normalize,
            "sample_rate": self.sample_rate,
            "weight_dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
            "default_subnet": default,
            "default_subnet_params": self.params(default),
            "min_params": self.params(default if one else self.space.min_subnet),
            "max_params": self.params(default if one else self.space.max_subnet),
            "num_subnets": 1 if one else self.space.num_subnets,
            "file_size": self.path.stat().st_size if self.path else None,
            "sha256": self.sha256,
        }
        if one:
            data["source"] = self.meta.get("source")
        return data


def parse_random(source: str | os.PathLike) -> tuple[str, int | None] | None:
    """``random:KIND[:SEED]`` -> (KIND, SEED, or None when it names none); None for any other
    source. A malformed one is a :class:`CheckpointNameError`."""
    text = str(source)
    if not text.startswith("random:"):
        return None
    parts = text.split(":")
    if len(parts) > 3 or parts[1] not in RELEASED:
        raise CheckpointNameError(f"{text}: random checkpoints are random:base, random:small or random:stage1[:SEED]")
    if len(parts) == 2:
        return parts[1], None
    if not (parts[2].isascii() and parts[2].isdigit() and len(parts[2]) <= 20 and int(parts[2]) <= MAX_SEED):
        raise CheckpointNameError(f"{text[:60]}: the seed must be an integer from 0 to {MAX_SEED}")
    return parts[1], int(parts[2])


def load_checkpoint(source: str | os.PathLike, *, seed: int | None = None, trust: bool = False,
                    progress: bool = True) -> Checkpoint:
    """Open a checkpoint by path, by released name (``base``, ``small``, ``stage1``: downloaded once
    with :func:`fetch`; ``progress`` shows the hub's download bar on stderr), or build a random one (``random:base``, ``random:small``, ``random:stage1``,
    optionally ``random:base:SEED``; else ``seed``, None: :data:`~lighthubert.defaults.SEED`; a
    ``seed`` given beside another SEED in the name is an error).

    Raises :class:`CheckpointError` with one line naming the file and the reason
    (:class:`CheckpointNameError` for a name no checkpoint could have).
    """
    text = str(source)
    if not text.strip():  # Path("") would be the current folder
        raise CheckpointNameError("the checkpoint is an empty string; give a path, a released name (base, small, stage1) "
                                  "or random:KIND")
    random_name = parse_random(text)
    if random_name is not None:
        kind, named = random_name
        if named is not None:
            if seed is not None and seed != named:
                raise CheckpointNameError(f"{text}: names seed {named}, and seed {seed} (--seed) was given too; "
                                          "give the seed once")
            seed = named
        seed = SEED if seed is None else seed
        check_seed(seed)
        obj = random_checkpoint(kind, seed=seed)
        ckpt = from_object(obj, text)
        ckpt.random = True
        ckpt.source = f"random:{kind}:{seed}"
        return ckpt
    if seed is not None:
        warnings.warn(f"seed {seed} (--seed) has no effect: it seeds random:KIND checkpoints only",
                      LightHubertWarning, stacklevel=2)
    if text in RELEASED and not Path(text).is_file():  # a folder named small (a data subset) is not a checkpoint
        path = fetch(text, progress)
    else:
        path = Path(text)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    try:
        data = _read_regular(path)
    except FileNotFoundError:
        names = ", ".join(RELEASED)
        hint = (f" (released checkpoints by name: {names}; random:base for random weights)"
                if path.suffix.lower() in ("", ".pt", ".pth", ".ckpt", ".bin") else "")
        raise CheckpointError(f"{path}: no such file{hint}") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror}") from None
    digest = hashlib.sha256()
    hashing = threading.Thread(target=digest.update, args=(data,), name="lhb-sha256")  # releases the GIL
    hashing.start()
    try:
        _check_records(data, str(path))
        obj = _read_pickle(data, str(path), trust)
        ckpt = from_object(obj, str(path))
    finally:
        hashing.join()
    ckpt.path = path
    ckpt.sha256 = digest.hexdigest()
    if ckpt.meta.get("random"):
        ckpt.random = True
    return ckpt


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_CHECKPOINT_BYTES`. A FIFO or device
    (``/dev/zero``) is refused without reading: it could block or never end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path}: not a regular file (a FIFO, device or socket); give a checkpoint file")
        if st.st_size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: {st.st_size} bytes, more than any LightHuBERT checkpoint "
                                  f"(at most {MAX_CHECKPOINT_BYTES >> 30} GiB are read)")
        head = f.read(HEAD_BYTES)
        _check_head(head, str(path))
        f.seek(0)  # read whole again: head + rest would hold the file twice for a moment
        data = f.read(MAX_CHECKPOINT_BYTES + 1)
    if len(data) > MAX_CHECKPOINT_BYTES:  # grew while being read
        raise CheckpointError(f"{path}: more than {MAX_CHECKPOINT_BYTES >> 30} GiB; not a LightHuBERT checkpoint")
    return data


def _check_records(data: bytes, where: str) -> None:
    """A torch zip file must hold its records stored, as ``torch.save`` writes them: a compressed
    record could inflate to any size (4 MB to 4 GB) when torch reads it."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return  # not a zip: the legacy format or not a checkpoint; torch.load says which
    try:
        records = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise CheckpointError(f"{where}: truncated or corrupt checkpoint ({err})") from None
    if any(info.filename.split("/", 1)[-1] == "constants.pkl" for info in records):  # torch.jit.save's layout
        raise CheckpointError(f"{where}: a TorchScript export (lhb info describes it; torch.jit.load runs it), not a "
                              f"checkpoint; -c takes a .pt file (lhb subnet --export NAME.pt writes one of a subnet)")
    for info in records:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
            raise CheckpointError(
                f"{where}: record {info.filename!r} is compressed ({info.compress_size} bytes inflating to "
                f"{info.file_size}); torch.save never compresses records, so this file is refused"
            )


KM_FORMAT = "lighthubert-kmeans"
"""The ``format`` entry of a k-means file from ``lhb units learn`` (:mod:`lighthubert.units`), also a .pt."""


class KMeansFile(CheckpointError):
    """A k-means file from ``lhb units learn`` where a checkpoint was expected (both are .pt files);
    ``km`` is what it holds, for a caller that can use it (``lhb info`` describes it)."""

    def __init__(self, message: str, km: dict):
        super().__init__(message)
        self.km = km


def from_object(obj: Any, where: str) -> Checkpoint:
    """Check a loaded checkpoint dict and describe it."""
    if isinstance(obj, Mapping) and obj.get("format") == KM_FORMAT:
        raise KMeansFile(f"{where}: a k-means file made by lhb units learn (lhb units apply reads it), "
                         "not a LightHuBERT checkpoint", dict(obj))
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: not a LightHuBERT checkpoint (it holds {kind_of(obj)}, not a dict with "
                              "'cfg' and 'model' entries)")
    for entry in ("cfg", "model"):
        if entry not in obj:
            raise CheckpointError(f"{where}: not a LightHuBERT checkpoint (no '{entry}' entry; it needs 'cfg' and 'model')")
        if not isinstance(obj[entry], Mapping):
            raise CheckpointError(f"{where}: not a LightHuBERT checkpoint (its '{entry}' entry is "
                                  f"{kind_of(obj[entry])}, not a dict)")
    model_cfg, task = obj["cfg"].get("model"), obj["cfg"].get("task")
    if not isinstance(model_cfg, Mapping):
        got = "missing" if model_cfg is None else f"{kind_of(model_cfg)}, not a dict"
        raise CheckpointError(f"{where}: not a LightHuBERT checkpoint (cfg['model'] is {got})")
    kind = model_cfg.get("_name")
    if kind not in KINDS:
        raise CheckpointError(
            f"{where}: unknown model kind {kind!r}; expected hubert_pruner (Base, Small), student_hubert (Stage 1) "
            "or an exported subnet"
        )
    try:
        cfg = ModelConfig.from_dict(model_cfg)
    except ConfigError as err:
        raise CheckpointError(f"{where}: {err}") from None
    space, subnet = SPACES["base"], None
    if kind == "hubert_pruner":
        ref = str(model_cfg.get("pruner_supernet", "")).lower()
        if ref.endswith("small.yaml"):
            space = SPACES["small"]
        elif not ref.endswith("base.yaml"):
            raise CheckpointError(f"{where}: pruner_supernet {model_cfg.get('pruner_supernet')!r} names neither Base.yaml nor Small.yaml")
    elif kind == SUBNET_KIND:
        try:
            space = get_space(str(model_cfg.get("supernet_type", "base")))
            subnet = space.validate(model_cfg.get("subnet"), strict=False)
        except SubnetError as err:
            raise CheckpointError(f"{where}: bad subnet in the file: {err}") from None
    normalize = cfg.extractor_mode == "layer_norm"
    try:
        if isinstance(task, Mapping) and "normalize" in task:
            normalize = config_flag(task["normalize"], "task normalize")
        meta = {k: model_cfg[k] for k in ("random", "source", "source_sha256", "fixed_params") if k in model_cfg}
        if "random" in meta:
            meta["random"] = config_flag(meta["random"], "random")
        for k in ("source", "source_sha256"):
            if not isinstance(meta.get(k), (str, type(None))):  # None: a random:* supernet has no file
                raise ConfigError(f"{k} is {kind_of(meta[k])}, not text")
        if "fixed_params" in meta and not (type(meta["fixed_params"]) is int and meta["fixed_params"] >= 0):
            raise ConfigError(f"fixed_params is {meta['fixed_params']!r}, not a count of parameters")
    except ConfigError as err:
        raise CheckpointError(f"{where}: {err}") from None
    rate = task.get("sample_rate", 16000) if isinstance(task, Mapping) else 16000
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate != 16000:
        raise CheckpointError(f"{where}: sample_rate {rate!r} is not supported (LightHuBERT works at 16000 Hz)")
    rate = 16000
    state = dict(obj["model"])
    _check_state(state, _expected_shapes(cfg, subnet), where)
    return Checkpoint(source=where, kind=kind, space=space, cfg=cfg, state=state, normalize=normalize,
                      sample_rate=rate, subnet=subnet, meta=meta)


def _expected_shapes(cfg: ModelConfig, subnet: dict | None) -> dict[str, tuple[int, ...]]:
    if subnet is None:
        return released_layout(cfg)
    with torch.device("meta"):
        model = SubnetModel(cfg, subnet)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_state(state: dict, expected: Mapping[str, tuple[int, ...]], where: str) -> None:
    for name, shape in expected.items():
        if name.startswith("layer_pred_heads"):
            continue  # training-only; the authors' loader does not need it either
        t = state.get(name)
        if t is None:
            raise CheckpointError(f"{where}: weight {name!r} is missing")
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise CheckpointError(f"{where}: weight {name!r} is not a floating-point tensor")
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{where}: weight {name!r} has shape {tuple(t.shape)}, expected {shape}")
        if t.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(t))).all()):  # NaN or inf shows in min/max
            raise CheckpointError(f"{where}: weight {name!r} holds NaN or infinite values")


# ----------------------------------------------------------------------------- writing files


def _released_cfg(kind: str, extractor_mode: str, layer_norm_first: bool) -> dict:
    base = ModelConfig(extractor_mode=extractor_mode, layer_norm_first=layer_norm_first).to_dict()
    training_only = {**TRAINING_DEFAULTS, **HUBERT_TRAINING_EXTRA}
    if kind == "stage1":
        return {"_name": "student_hubert", **training_only, **base}
    return {"_name": "hubert_pruner", "pruner_supernet": f"config/pruner/{kind.capitalize()}.yaml",
            **training_only, **base}


def random_checkpoint(kind: str = "base", seed: int = 0, extractor_mode: str | None = None,
                      layer_norm_first: bool = False) -> dict:
    """A checkpoint dict in the released layout (SPEC.md §1) with random float16 weights.

    ``kind`` is base, small or stage1. The extractor mode defaults to ``layer_norm`` (normalize true)
    for base and small and ``default`` (normalize false) for stage1, so both modes are exercised.
    Weights are scaled so activations stay in a realistic range through all 12 layers.
    """
    if kind not in RELEASED:
        raise SettingError(f"kind must be one of {', '.join(RELEASED)}", "kind")
    mode = extractor_mode or ("default" if kind == "stage1" else "layer_norm")
    model_cfg = _released_cfg(kind, mode, layer_norm_first)
    cfg = ModelConfig.from_dict(model_cfg)
    gen = torch.Generator().manual_seed(int(seed))

    def randn(*shape: int, std: float = 1.0, mean: float = 0.0) -> Tensor:
        return torch.randn(*shape, generator=gen) * std + mean

    state: dict[str, Tensor] = {}
    for name, shape in released_layout(cfg).items():
        leaf = name.rsplit(".", 1)[-1]
        if name == "mask_emb":
            t = torch.rand(*shape, generator=gen)
        elif name.endswith("weight_g"):
            continue
        elif is_norm(name):
            t = randn(*shape, std=0.1, mean=1.0 if leaf == "weight" else 0.0)
        elif leaf == "bias":
            t = randn(*shape, std=0.02)
        elif name.endswith("weight_v"):
            t = randn(*shape, std=math.sqrt(4.0 / (shape[2] * shape[0])))
        else:  # conv and linear weights: unit-variance outputs
            t = randn(*shape, std=1.0 / math.sqrt(math.prod(shape[1:])))
        state[name] = t
    v = state["encoder.pos_conv.0.weight_v"]
    state["encoder.pos_conv.0.weight_g"] = v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt() * randn(1, 1, cfg.conv_pos, std=0.1, mean=1.0)
    if kind != "stage1":  # training-only tensors the released Base/Small files carry
        state["label_embs_concat"] = randn(504, 256, std=0.02)
        state["final_proj.weight"] = randn(256, cfg.embed_dim, std=0.02)
        state["final_proj.bias"] = torch.zeros(256)
    state = {k: v.to(torch.float16) for k, v in state.items()}
    model_cfg["random"] = True
    return {
        "args": None,
        "cfg": {"model": model_cfg, "task": {"_name": "hubert_pretraining", "normalize": mode == "layer_norm",
                                             "sample_rate": 16000, "labels": ["km"]}},
        "model": state,
        "optimizer_history": [{"criterion_name": "LightHuBERTCriterion", "num_updates": np.int64(400000)}],
        "extra_state": {"epoch": 1, "best": np.float64(1.25), "train_iterator": {"epoch": 1}},
    }


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`write_atomic`. torch serialises into memory and
    Python writes the bytes: a full disk or a file size limit is then an OSError naming the reason
    (torch's own writer fails with 'unexpected pos', or aborts the process when it is TorchScript's)."""
    return write_bytes_atomic(path, lambda buf: torch.save(obj, buf))


def write_random_checkpoint(path: str | os.PathLike, kind: str = "base", seed: int = 0,
                            extractor_mode: str | None = None, layer_norm_first: bool = False) -> Path:
    """Write :func:`random_checkpoint` to ``path``, laid out like the released files."""
    return save_atomic(random_checkpoint(kind, seed, extractor_mode, layer_norm_first), path)


def export_subnet(ckpt: Checkpoint, subnet: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a standalone checkpoint holding only ``subnet``'s weights (as stored, plus the rebuilt
    positional convolution in float32). :func:`load_checkpoint` opens it and gives identical numbers.
    An existing file is replaced only with ``overwrite``, ``ckpt``'s own file never."""
    if ckpt.subnet is not None:
        raise CheckpointError(f"{ckpt.source}: is already an exported subnet")
    check_export_target(ckpt, path, overwrite)
    sub = ckpt.resolve_subnet(subnet)
    state = {k: v.clone() for k, v in cut_subnet(ckpt.state, ckpt.cfg, sub).items()}
    model_cfg = {**ckpt.cfg.to_dict(), "_name": SUBNET_KIND, "supernet_type": ckpt.space.name, "subnet": sub,
                 "source": ckpt.name, "source_sha256": ckpt.sha256, "fixed_params": ckpt.fixed_params,
                 "params": ckpt.params(sub)}
    if ckpt.random:
        model_cfg["random"] = True
    obj = {"cfg": {"model": model_cfg, "task": {"normalize": ckpt.normalize, "sample_rate": ckpt.sample_rate}},
           "model": state}
    try:
        return save_atomic(obj, path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot write: {err.strerror or err}") from None


def check_export_target(ckpt: Checkpoint, path: str | os.PathLike, overwrite: bool) -> None:
    """:class:`CheckpointError` when an export of ``ckpt`` cannot be written at ``path``: the
    checkpoint's own file, a folder, a missing folder, or an existing file without ``overwrite``."""
    problem = target_problem(path, overwrite=overwrite, sources={"the checkpoint the subnet is cut from": ckpt.path})
    if problem:
        raise CheckpointError(f"{path}: {problem}")


def kind_label(ckpt: Checkpoint) -> str:
    """Human name of what the checkpoint is."""
    if ckpt.kind == SUBNET_KIND:
        return f"exported {ckpt.space.name} subnet"
    if ckpt.kind == "student_hubert":
        return "Stage 1 (student_hubert)"
    return f"{ckpt.space.name.capitalize()} supernet (hubert_pruner)"


__all__ = [
    "Checkpoint", "CheckpointError", "RELEASED", "cache_dir", "export_subnet", "fetch", "kind_label",
    "load_checkpoint", "random_checkpoint", "url_for", "write_random_checkpoint",
]
