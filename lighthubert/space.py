"""Search spaces, subnets and their parameter counts (SPEC.md §2).

A *subnet* is the authors' dict::

    {"atten_dim": [..L], "embed_dim": E, "ffn_embed": [..L], "heads_num": [..L],
     "layer_num": L, "slide_wsz": ["global", ..L]}

Everything here is plain Python: no tensors are needed to validate, sample, count or search subnets.
"""

from __future__ import annotations

import decimal
import itertools
import json
import math
import numbers
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import SettingError, kind_of

HEAD_DIM = 64
SUPERNET_LAYERS = 12
SUPERNET_EMBED = 768
SUPERNET_FFN = 3072
POS_CONV_KERNEL = 128
POS_CONV_GROUPS = 16
CONV_DIM = 512  # channels of the conv feature extractor's last layer (post_extract_proj's input)
SUBNET_KEYS = ("atten_dim", "embed_dim", "ffn_embed", "heads_num", "layer_num", "slide_wsz")

# For each depth, which of the supernet's 12 layers run (1) and which are skipped (0).
DEPTH_MAPS: dict[int, tuple[int, ...]] = {
    12: (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1),
    11: (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0),
    10: (1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0),
    9: (1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0),
    8: (1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0),
    7: (1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0),
    6: (1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0),
}


class SubnetError(SettingError):
    """A subnet dict (or JSON) that does not describe a subnet of the search space."""


def subnet_dict(embed_dim: int, heads: Iterable[int], ffn: Iterable[int]) -> dict:
    """The authors' subnet dict from a width and per-layer heads and FFN sizes."""
    heads, ffn = list(heads), list(ffn)
    return {
        "atten_dim": [HEAD_DIM * h for h in heads],
        "embed_dim": embed_dim,
        "ffn_embed": ffn,
        "heads_num": heads,
        "layer_num": len(heads),
        "slide_wsz": ["global"] * len(heads),
    }


def kept_layers(layer_num: int) -> list[int]:
    """Indices of the supernet layers a ``layer_num``-deep subnet runs, in order."""
    return [i for i, keep in enumerate(DEPTH_MAPS[layer_num]) if keep]


@dataclass(frozen=True)
class SearchSpace:
    """One of the released search spaces (``base`` or ``small``)."""

    name: str
    embed_dim: tuple[int, ...]
    heads_num: tuple[int, ...]
    ffn_ratio: tuple[float, ...]
    layer_num: tuple[int, ...]
    default_embed: int
    default_heads: int
    default_ratio: float

    @property
    def num_subnets(self) -> int:
        per_layer = len(self.ffn_ratio) * len(self.heads_num)
        return len(self.embed_dim) * sum(per_layer**n for n in self.layer_num)

    def make(self, embed_dim: int, heads: Iterable[int], ratios: Iterable[float]) -> dict:
        """A subnet dict from per-layer heads and FFN ratios."""
        return subnet_dict(embed_dim, heads, [int(r * embed_dim) for r in ratios])

    @property
    def default_subnet(self) -> dict:
        return self.make(self.default_embed, [self.default_heads] * 12, [self.default_ratio] * 12)

    @property
    def max_subnet(self) -> dict:
        n = max(self.layer_num)
        return self.make(max(self.embed_dim), [max(self.heads_num)] * n, [max(self.ffn_ratio)] * n)

    @property
    def min_subnet(self) -> dict:
        n = min(self.layer_num)
        return self.make(min(self.embed_dim), [min(self.heads_num)] * n, [min(self.ffn_ratio)] * n)

    def preset(self, name: str) -> dict:
        presets = {"default": self.default_subnet, "max": self.max_subnet, "min": self.min_subnet}
        if name not in presets:
            raise SubnetError(f"unknown preset {name!r}; choose one of: default, max, min")
        return presets[name]

    def sample(self, rng: random.Random | None = None) -> dict:
        """A random subnet. Draws from ``rng`` (the global ``random`` module when None) in the
        authors' order, so the same seed gives the authors' ``sample_subnet()`` result."""
        r = rng if rng is not None else random
        n = r.choice(self.layer_num)
        e = r.choice(self.embed_dim)
        ffn = [int(r.choice(self.ffn_ratio) * e) for _ in range(n)]
        heads = [r.choice(self.heads_num) for _ in range(n)]
        return subnet_dict(e, heads, ffn)

    def validate(self, subnet: Any, *, strict: bool = True) -> dict:
        """Check a subnet and return it normalised (lists of ints).

        With ``strict`` the values must be in this search space; otherwise anything the 768-wide,
        12-layer supernet can run is accepted (as the authors' code does).
        """
        sub = check_subnet(subnet)
        if strict:
            try:
                self._check_in_space(sub)
            except SubnetError as err:
                made_for = subnet.get("supernet")  # what lhb subnet / describe() write
                if isinstance(made_for, str) and made_for.strip().lower() != self.name:
                    raise SubnetError(f"{err} (this subnet was made for the {made_for} space: "
                                      f"\"supernet\": {json.dumps(made_for)})") from None
                raise
        return sub

    def _check_in_space(self, sub: dict) -> None:
        """SubnetError unless the checked subnet ``sub`` is in this search space."""
        if sub["embed_dim"] not in self.embed_dim:
            raise SubnetError(_not_in("embed_dim", sub["embed_dim"], self.embed_dim, self.name))
        if sub["layer_num"] not in self.layer_num:
            raise SubnetError(_not_in("layer_num", sub["layer_num"], self.layer_num, self.name))
        ffn_allowed = sorted({int(r * sub["embed_dim"]) for r in self.ffn_ratio})
        for i in range(sub["layer_num"]):
            if sub["heads_num"][i] not in self.heads_num:
                raise SubnetError(
                    _not_in(f"heads_num[{i}]", sub["heads_num"][i], self.heads_num, self.name)
                )
            if sub["ffn_embed"][i] not in ffn_allowed:
                raise SubnetError(
                    _not_in(f"ffn_embed[{i}]", sub["ffn_embed"][i], ffn_allowed, self.name)
                    + f" (ratios {', '.join(map(str, self.ffn_ratio))} of embed_dim)"
                )

    def authors_dict(self) -> dict:
        """The authors' ``search_space`` property."""
        return {
            "atten_dim": [HEAD_DIM * h for h in self.heads_num],
            "embed_dim": list(self.embed_dim),
            "ffn_ratio": list(self.ffn_ratio),
            "heads_num": list(self.heads_num),
            "layer_num": list(self.layer_num),
        }


SPACES: dict[str, SearchSpace] = {
    "base": SearchSpace("base", (512, 640, 768), (8, 10, 12), (3.5, 4.0), (12,), 640, 10, 4.0),
    "small": SearchSpace(
        "small", (256, 384, 512), (4, 6, 8), (3.0, 3.5, 4.0), (10, 11, 12), 384, 6, 4.0
    ),
}


def get_space(name: str) -> SearchSpace:
    try:
        return SPACES[name.lower()]
    except (KeyError, AttributeError):
        raise SubnetError(f"unknown search space {name!r}; choose base or small") from None


def _not_in(field: str, value: Any, allowed: Iterable, space: str) -> str:
    return f"{field} is {value!r}; the {space} space allows {', '.join(map(str, allowed))}"


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    """``value`` as an int: Python or numpy integers (a subnet built with numpy, as the authors' code
    takes), or whole floats."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, numbers.Real)):
        raise SubnetError(f"{field} must be an integer, got {value!r}")
    if not isinstance(value, numbers.Integral):
        value = float(value)
        if not math.isfinite(value) or value != int(value):
            raise SubnetError(f"{field} must be an integer, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        shown = value if value.bit_length() < 64 else "a huge number"
        raise SubnetError(f"{field} is {shown}; it must be between {lo} and {hi}")
    return value


def check_subnet(subnet: Any) -> dict:
    """Structural checks any subnet of the released 768-wide, 12-layer supernet must pass.

    Returns a normalised copy: the six authors' keys, ints, ``slide_wsz`` all "global".
    An ``ffn_ratio`` list (as the authors' default subnet carries) is accepted and checked
    against ``ffn_embed``.
    """
    if isinstance(subnet, (list, tuple)) and subnet and all(isinstance(x, Mapping) for x in subnet):
        raise SubnetError(f"a subnet must be a JSON object / dict, got a list of {len(subnet)} (as lhb subnet writes "
                          "several: --sample, or --preset without -c or --supernet, one per space); give one of them")
    if not isinstance(subnet, Mapping):
        raise SubnetError(f"a subnet must be a JSON object / dict, got {kind_of(subnet)}")
    unknown = sorted(set(subnet) - set(SUBNET_KEYS) - {"ffn_ratio", "supernet", "params"})
    if unknown:
        raise SubnetError(
            f"unknown subnet key(s) {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(SUBNET_KEYS)}"
        )
    missing = [k for k in ("embed_dim", "ffn_embed", "heads_num", "layer_num") if k not in subnet]
    if missing:
        raise SubnetError(f"subnet is missing {', '.join(missing)}")
    n = _int(subnet["layer_num"], "layer_num", 1, SUPERNET_LAYERS)
    if n not in DEPTH_MAPS:
        raise SubnetError(
            f"layer_num is {n}; the supernet has depth maps for {', '.join(map(str, sorted(DEPTH_MAPS)))}"
        )
    e = _int(subnet["embed_dim"], "embed_dim", 1, SUPERNET_EMBED)
    if e % POS_CONV_GROUPS:
        raise SubnetError(f"embed_dim is {e}; it must be a multiple of {POS_CONV_GROUPS}")

    def per_layer(key: str) -> list:
        value = subnet[key]
        if not isinstance(value, (list, tuple)):
            raise SubnetError(f"{key} must be a list of {n} values, got {value!r}")
        if not n <= len(value) <= SUPERNET_LAYERS:
            raise SubnetError(f"{key} has {len(value)} entries; layer_num is {n} (at most {SUPERNET_LAYERS} entries)")
        return list(value[:n])

    heads = [
        _int(h, f"heads_num[{i}]", 1, SUPERNET_EMBED // HEAD_DIM)
        for i, h in enumerate(per_layer("heads_num"))
    ]
    ffn = [_int(f, f"ffn_embed[{i}]", 1, SUPERNET_FFN) for i, f in enumerate(per_layer("ffn_embed"))]
    for i, f in enumerate(ffn):
        if math.ceil(f / e) > SUPERNET_FFN // SUPERNET_EMBED:
            raise SubnetError(
                f"ffn_embed[{i}] is {f}; with embed_dim {e} it can be at most "
                f"{e * SUPERNET_FFN // SUPERNET_EMBED}"
            )
    if "atten_dim" in subnet:
        atten = [_int(a, f"atten_dim[{i}]", 1, SUPERNET_EMBED) for i, a in enumerate(per_layer("atten_dim"))]
        for i, (a, h) in enumerate(zip(atten, heads)):
            if a != HEAD_DIM * h:
                raise SubnetError(
                    f"atten_dim[{i}] is {a} but heads_num[{i}] is {h}; atten_dim must be {HEAD_DIM} * heads_num"
                )
    if "ffn_ratio" in subnet:
        ratios = per_layer("ffn_ratio")
        for i, (r, f) in enumerate(zip(ratios, ffn)):
            if isinstance(r, bool) or not isinstance(r, (int, float)) or int(r * e) != f:
                raise SubnetError(f"ffn_ratio[{i}] is {r!r} but ffn_embed[{i}] is {f} (embed_dim {e})")
    if "slide_wsz" in subnet:
        for i, w in enumerate(per_layer("slide_wsz")):
            if w != "global":
                raise SubnetError(
                    f"slide_wsz[{i}] is {w!r}: sliding-window attention is in no released search "
                    "space and is not supported; use \"global\""
                )
    return subnet_dict(e, heads, ffn)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise SubnetError(f"not valid JSON: {err}") from None
    except ValueError as err:  # e.g. an integer of thousands of digits
        raise SubnetError(f"not usable JSON: {str(err).splitlines()[0][:120]}") from None


def parse_subnet(text: str) -> dict:
    """A subnet from JSON text (structure checked; not yet matched against a space)."""
    return check_subnet(_json(text))


# ----------------------------------------------------------------------------- parameter counts


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for a file, or holding a NUL byte
        return False


def _read_subnet_text(text: str) -> tuple[str | None, Any, Path | None]:
    """What ``--subnet`` TEXT holds, read once: (a preset name, else None; the JSON it holds, inline or
    in a file; that file, else None). Not yet matched against a space."""
    s = text.strip()
    if s in ("default", "max", "min"):
        return s, None, None
    if not s:  # Path("") is ".", the current folder
        raise SubnetError(f"{text!r} is empty: give a preset (default, max, min), inline JSON or a JSON file")
    path = Path(s)
    is_file = _is_file(path)
    if s.startswith(("{", "[")) and not is_file:  # a list: what lhb subnet --sample prints, refused with a word
        return None, _json(s), None
    if not is_file:
        shown = repr(text) if len(text) <= 80 else repr(text[:60]) + f" ... ({len(text):,} characters)"
        try:
            there = path.exists()
        except (OSError, ValueError):
            there = False
        if there:  # a folder, a FIFO, /dev/stdin: never read as a file (a FIFO could wait forever)
            raise SubnetError(f"{path}: not a regular file, so not a JSON file to read (lhb reads a subnet piped to "
                              "it with --subnet -)")
        raise SubnetError(f"{shown} is not a preset (default, max, min), inline JSON or an existing JSON file")
    try:
        return None, _json(path.read_text(encoding="utf-8-sig")), path  # a byte-order mark is not JSON
    except (OSError, UnicodeDecodeError) as err:
        raise SubnetError(f"{path}: cannot read: {err}") from None
    except SubnetError as err:
        raise SubnetError(f"{path}: {err}") from None


def _subnet_in(space: SearchSpace, preset: str | None, data: Any, path: Path | None) -> dict:
    """:func:`_read_subnet_text`'s answer as a validated subnet of ``space`` (its ``"supernet"``, as
    written, can explain a mismatch); a file's errors name the file."""
    if preset is not None:
        return space.preset(preset)
    try:
        return space.validate(data)
    except SubnetError as err:
        if path is None:
            raise
        raise SubnetError(f"{path}: {err}") from None


def subnet_from_text(text: str, space: SearchSpace) -> dict:
    """A validated subnet of ``space`` from a preset name (default, max, min), inline JSON or the
    path of a JSON file; :class:`SubnetError` says which field is wrong (and names the file)."""
    return _subnet_in(space, *_read_subnet_text(text))


def subnet_in_spaces(text: str, names: Iterable[str] = ("base", "small")) -> tuple[dict, str]:
    """:func:`subnet_from_text` in the first of the spaces ``names`` that accepts it, the space its JSON
    names (``"supernet"``, as ``lhb subnet`` writes it) first: (subnet, space name). (The Small max, in
    both spaces, came back as "base" from its own "small" JSON.)"""
    names = list(names)
    read = _read_subnet_text(text)  # once: a file could change between reads
    declared = read[1].get("supernet") if isinstance(read[1], dict) else None
    if declared in names:
        names.remove(declared)
        names.insert(0, declared)
    errors = []
    for n in names:
        try:
            return _subnet_in(get_space(n), *read), n
        except SubnetError as err:
            errors.append(str(err))
    if len(set(errors)) == 1:  # the same in every space (not a subnet at all): said once
        raise SubnetError(errors[0])
    raise SubnetError("; ".join(f"{n}: {e}" for n, e in zip(names, errors)))


def layer_params(embed_dim: int, heads: int, ffn: int) -> int:
    """Parameters of one sliced encoder layer: q, k, v, out projections, two layer norms, FFN."""
    a = HEAD_DIM * heads
    return 3 * (a * embed_dim + a) + (embed_dim * a + embed_dim) + 4 * embed_dim + 2 * ffn * embed_dim + ffn + embed_dim


def embed_params(embed_dim: int, conv_dim: int = CONV_DIM, conv_pos: int = POS_CONV_KERNEL) -> int:
    """Width-dependent parameters outside the layers: post_extract_proj (from ``conv_dim`` channels),
    the positional conv (kernel ``conv_pos``), the final norm."""
    pos_conv = embed_dim * (embed_dim // POS_CONV_GROUPS) * conv_pos + embed_dim
    return (conv_dim * embed_dim + embed_dim) + pos_conv + 2 * embed_dim


def count_params(subnet: Mapping, fixed: int | None = None, *, conv_dim: int = CONV_DIM,
                 conv_pos: int = POS_CONV_KERNEL) -> int:
    """The authors' ``calc_sampled_param_num``: ``fixed`` is every parameter outside the encoder,
    ``post_extract_proj`` and the prediction heads (conv extractor, its norms, ``layer_norm``,
    ``mask_emb``) of the checkpoint; ``conv_dim`` (its conv extractor's last channel count) and
    ``conv_pos`` (its positional conv kernel) are the released ones unless given. None: the
    released checkpoints' fixed part. :attr:`Checkpoint.count_kwargs` has all three of a file."""
    e = subnet["embed_dim"]
    layers = sum(
        layer_params(e, h, f) for h, f in zip(subnet["heads_num"][: subnet["layer_num"]], subnet["ffn_embed"])
    )
    return (RELEASED_FIXED_PARAMS if fixed is None else fixed) + embed_params(e, conv_dim, conv_pos) + layers


# The fixed part of the released checkpoints (layer_norm extractor, 512 channels, 768-wide mask_emb).
RELEASED_FIXED_PARAMS = 4_208_384


def best_under_budget(
    budget: int, spaces: SearchSpace | Iterable[SearchSpace] | Mapping[str, SearchSpace], fixed: int | None = None, *,
    conv_dim: int = CONV_DIM,
    conv_pos: int = POS_CONV_KERNEL,
) -> tuple[dict, SearchSpace, int] | None:
    """The subnet with the most parameters not above ``budget``, searched exactly.

    A subnet's count is a fixed part (per width) plus a sum over its layers, and the order of the
    layers does not change it, so for each width and depth every multiset of per-layer choices is
    enumerated. Returns (subnet, space, params), or None when every subnet is above the budget.
    Ties go to the deeper, then wider subnet. ``spaces``: one space, several, or a mapping of them
    (``SPACES``). ``fixed``, ``conv_dim``, ``conv_pos``: as for :func:`count_params`.
    """
    if isinstance(spaces, SearchSpace):
        spaces = [spaces]
    elif isinstance(spaces, Mapping):
        spaces = list(spaces.values())
    best: tuple[int, int, int, dict, SearchSpace] | None = None
    for space in spaces:
        for e in space.embed_dim:
            options = sorted(
                ((layer_params(e, h, int(r * e)), h, r) for h in space.heads_num for r in space.ffn_ratio),
                reverse=True,
            )
            base = (RELEASED_FIXED_PARAMS if fixed is None else fixed) + embed_params(e, conv_dim, conv_pos)
            for n in space.layer_num:
                found = _best_multiset([o[0] for o in options], n, budget - base)
                if found is None:
                    continue
                total, picks = found
                key = (base + total, n, e)
                if best is None or key > best[:3]:
                    heads = [options[i][1] for i in picks]
                    ratios = [options[i][2] for i in picks]
                    best = (*key, space.make(e, heads, ratios), space)
    if best is None:
        return None
    return best[3], best[4], best[0]


def _best_multiset(costs: list[int], n: int, budget: int) -> tuple[int, tuple[int, ...]] | None:
    """Largest sum of ``n`` costs (with repetition, as a multiset of indices) not above budget."""
    if budget < n * min(costs):
        return None
    best_total, best_pick = -1, None
    for pick in itertools.combinations_with_replacement(range(len(costs)), n):
        total = sum(costs[i] for i in pick)
        if best_total < total <= budget:
            best_total, best_pick = total, pick
    return best_total, best_pick


def parse_budget(text: str) -> int:
    """``30M``, ``30m``, ``3e7``, ``30000000``, ``1.5G``, ``500k`` -> a positive parameter count."""
    s = str(text).strip().replace("_", "").replace(",", "")
    scale = 1
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
    if s and s[-1].lower() in units:
        scale = units[s[-1].lower()]
        s = s[:-1]
    try:  # decimal, not float: 64.028224M is 64,028,224 parameters, where float gave 64,028,223.99...
        value = decimal.Decimal(s)
    except decimal.InvalidOperation:
        raise SubnetError(f"{text!r} is not a parameter budget; write e.g. 30M, 30m, 3e7 or 30000000") from None
    if not value.is_finite() or value <= 0:
        raise SubnetError(f"{text!r} is not a parameter budget; it must be a positive number")
    if value.adjusted() > 12:  # before multiplying: 1e9999999999999 overflows the decimal context
        raise SubnetError(f"{text!r} is not a sensible parameter budget (over 10^12)")
    total = value * scale
    if total < 1:
        raise SubnetError(f"{text!r} is not a parameter budget; it must be a positive number")
    if total > 10**12:
        raise SubnetError(f"{text!r} is not a sensible parameter budget (over 10^12)")
    return int(total)
