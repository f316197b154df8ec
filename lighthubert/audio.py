"""Reading audio as SPEC.md §4 says: soundfile, float32, channels averaged to mono, resampled to
16 kHz with ``torchaudio.functional.resample`` at its defaults.

torchaudio is imported only when a file needs resampling: everything else (the model, 16 kHz audio,
``lhb subnet``/``info``) works even where torchaudio's compiled library cannot be loaded.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import sys
import threading
from importlib import metadata

import numpy as np
import soundfile as sf
import torch

from .errors import LightHubertError
from .model import MIN_SAMPLES

SAMPLE_RATE = 16000
MIN_RATE, MAX_RATE = 1000, 384000
"""Sample rates accepted (Hz): outside, a file is refused before it is read (a 4 KB file that
declares 1 Hz would become half an hour of audio once resampled)."""
MAX_FILTER = 2**26
"""Most coefficients of the resampling filter allowed: ``torchaudio.functional.resample`` builds one
row per output phase, (16000 / g) x (rate / g + 2 x width) for g = gcd(rate, 16000), about 17 bytes
each at its peak (measured: 1.1 GB for the 67 million of 104455 Hz, the most the cap lets through, which
a decoding process may need at once). Every common rate needs under 12 million (44056 Hz the most: 0.2
GB); an odd one such as 16001 or 383999 Hz needs 256 million or 6 billion (4 or 97 GB), which would end
the run out of memory."""
MAX_AMPLITUDE = 1e10
"""Largest sample magnitude taken. Float audio is expected within about ±1; float audio scaled like
int32 (up to 2.1e9) still passes. The standardisation sums squares in float32: after the mean is
taken off a sample is at most 2e10, its square 4e20, so the sum stays below float32's 3.4e38 for
8e17 samples (1.7 million years at 16 kHz). At 1e18 one second already overflows to inf, and the
features came out as those of silence."""
FIX_TORCHAUDIO = "pip install --upgrade 'torch>=2.14' 'torchaudio>=2.11.1'"


class AudioError(LightHubertError):
    """An input that cannot be used. ``reason`` says why; ``path`` is the file when known (
    :func:`load_audio` gives it) and then leads the message: ``PATH: reason``."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        self.reason = reason
        self.path = None if path is None else os.fsdecode(path)
        super().__init__(reason if self.path is None else f"{self.path}: {reason}")

    def __reduce__(self):  # from a decoding process to the run, with both fields
        return type(self), (self.reason, self.path)


def sample_peak(data) -> float:
    """The largest sample magnitude of a numpy array or tensor: NaN when it holds a NaN (shown by both
    its min and max), inf when it holds an inf."""
    return max(-float(data.min()), float(data.max()))


def too_loud(peak: float) -> str:
    """The reason samples of magnitude ``peak`` (over :data:`MAX_AMPLITUDE`) are refused."""
    return (f"samples as large as {peak:.1e}: float audio is expected within about ±1 "
            f"(values this large overflow the computation)")


class ResamplerUnavailable(LightHubertError, RuntimeError):
    """torchaudio, needed to resample, cannot be loaded here: a problem of the installation, not of
    the input, so it stops the run instead of skipping files. The message names the file."""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _resampler():
    """``torchaudio.functional.resample``, or :class:`ResamplerUnavailable` with the reason."""
    try:
        import torchaudio.functional as AF
    except Exception as err:  # noqa: BLE001 - ImportError, OSError (undefined symbol), anything
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ResamplerUnavailable(reason[:300]) from None
    return AF.resample


def resample(wave: np.ndarray, rate: int, path: str | os.PathLike = "") -> np.ndarray:
    """(N,) float32 at ``rate`` -> float32 at 16 kHz, as ``torchaudio.functional.resample`` does."""
    try:
        fn = _resampler()
    except ResamplerUnavailable as err:
        raise ResamplerUnavailable(
            f"{path}: needs resampling from {rate} Hz to 16000 Hz, but torchaudio cannot be loaded "
            f"(torch {torch.__version__}, torchaudio {_version('torchaudio')}, Python {sys.version.split()[0]}: {err}); "
            f"fix the installation with: {FIX_TORCHAUDIO}"
        ) from None
    return fn(torch.from_numpy(np.ascontiguousarray(wave)), rate, SAMPLE_RATE).numpy()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a plain file"


def check_regular(path: str | os.PathLike) -> None:
    """:class:`AudioError` when ``path`` is missing, not a regular file (a folder that cannot be read
    says so: a folder walk could not list its files) or empty (0 bytes). Only
    ``stat`` is used, so a FIFO named ``x.wav`` (which would wait for a writer forever) is never opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioError("no such file") from None
    except OSError as err:
        raise AudioError(f"cannot read: {err.strerror or err}") from None
    if stat.S_ISDIR(st.st_mode):
        try:
            os.scandir(path).close()
        except OSError as err:  # a subfolder a folder walk could not list
            raise AudioError(f"a folder that cannot be read ({err.strerror or err}): its files were not listed") from None
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"not a regular file ({_kind(st.st_mode)})")
    if st.st_size == 0:
        raise AudioError("empty file (0 bytes)")


def filter_size(rate: int) -> int:
    """Coefficients of the filter ``torchaudio.functional.resample(x, rate, 16000)`` builds (0 at 16 kHz)."""
    if rate == SAMPLE_RATE:
        return 0
    g = math.gcd(rate, SAMPLE_RATE)
    orig, new = rate // g, SAMPLE_RATE // g
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))  # its lowpass_filter_width 6, rolloff 0.99
    return new * (orig + 2 * width)


def check_rate(rate: int) -> None:
    """:class:`AudioError` unless ``MIN_RATE <= rate <= MAX_RATE`` and resampling from ``rate``
    needs a filter of at most ``MAX_FILTER`` coefficients."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"sample rate {rate} Hz is outside the supported {MIN_RATE}-{MAX_RATE} Hz")
    size = filter_size(rate)
    if size > MAX_FILTER:
        g = math.gcd(rate, SAMPLE_RATE)
        raise AudioError(f"sample rate {rate} Hz: resampling it to 16 kHz ({rate // g}:{SAMPLE_RATE // g}) would need "
                         f"a filter of {size / 1e6:,.0f} million coefficients (about {size * 17 / 2**30:,.1f} GB); "
                         f"convert the file to a common rate such as 16000 Hz first")


def _decode_error(err: Exception) -> AudioError:
    """The reason a regular, non-empty file could not be decoded. libsndfile says "File does not
    exist or is not a regular file" for any file it cannot open (a corrupt MP3 too), which is
    untrue once :func:`check_regular` has passed, so that one is said plainly."""
    text = err.error_string if isinstance(err, sf.LibsndfileError) else str(err).strip()
    text = text.splitlines()[0] if text else type(err).__name__
    if text.startswith("File does not exist or is not a regular file"):
        text = "not audio that libsndfile can read (corrupt, or an unsupported format)"
    return AudioError(f"cannot decode: {text}")


HEADER_FORMATS = ("WAV", "WAVEX", "RF64", "W64", "AIFF", "AU", "NIST")
"""libsndfile's formats whose header :func:`truncation` reads (a FLAC etc. file is not opened again)."""
PLACEHOLDER = 0x7FFF0000
"""32-bit data sizes from here up (0xFFFFFFFF "unknown" and the like) are what a streaming writer
leaves when it cannot go back to the header: not judged, as a size of 0 is not."""
UNKNOWN64 = 1 << 62
"""The same for the 64-bit sizes of RF64 and W64 (no file holds 4 EiB)."""
AU_WIDTHS = {1: 1, 2: 1, 3: 2, 4: 3, 5: 4, 6: 4, 7: 8, 27: 1}
"""Bytes per sample of the AU encodings libsndfile reads uncompressed (u-law, PCM 8-32, float, double, A-law)."""


def _w64_guid(tag: bytes) -> bytes:
    return tag + bytes.fromhex("f3acd3118cd100c04f8edb8a")


_PLAIN_TAGS = (1, 3, 6, 7, 0xFFFE)  # PCM, IEEE float, A-law, mu-law, extensible: one frame per block


def _fmt_block(fmt: bytes, order: str) -> tuple[int, int]:
    """A WAVE fmt chunk's (bytes per block, frames per block). Compressed formats (IMA and MS ADPCM,
    GSM 6.10) state their frames per block after cbSize; the others hold one frame per block."""
    tag, block = struct.unpack(order + "H", fmt[:2])[0], struct.unpack(order + "H", fmt[12:14])[0]
    if tag not in _PLAIN_TAGS and len(fmt) >= 20 and struct.unpack(order + "H", fmt[16:18])[0] >= 2:
        return block, max(struct.unpack(order + "H", fmt[18:20])[0], 1)
    return block, 1


def _riff(f, magic: bytes) -> tuple[int, int, int] | None:
    """RIFF/RIFX/RF64 WAVE: the data chunk's (start, declared bytes, declared frames). In RF64 a data
    size of 0xFFFFFFFF stands for the ds64 chunk's 64-bit one."""
    order = ">" if magic == b"RIFX" else "<"
    offset, block, per_block, big = 12, 0, 1, None
    for _ in range(1000):  # a bounded walk over the chunks before the data
        f.seek(offset)
        cid, length = struct.unpack(order + "4sI", f.read(8))
        if cid == b"ds64" and length >= 16:
            big = struct.unpack("<Q", f.read(16)[8:])[0]
        elif cid == b"fmt " and length >= 14:
            block, per_block = _fmt_block(f.read(min(length, 20)), order)
        elif cid == b"data":
            if length == 0xFFFFFFFF and big is not None:
                length = big
            elif length >= PLACEHOLDER:
                return None
            return (offset + 8, length, length // block * per_block) if block else None
        offset += 8 + length + (length & 1)
    return None


def _w64(f) -> tuple[int, int, int] | None:
    """Sony Wave64: GUID chunks with 64-bit sizes that count their 24-byte header, 8-byte aligned."""
    f.seek(24)
    if f.read(16) != _w64_guid(b"wave"):
        return None
    offset, block, per_block = 40, 0, 1
    for _ in range(1000):
        f.seek(offset)
        guid, length = struct.unpack("<16sQ", f.read(24))
        if guid == _w64_guid(b"fmt ") and length >= 24 + 14:
            block, per_block = _fmt_block(f.read(min(length - 24, 20)), "<")
        elif guid == _w64_guid(b"data"):
            return (offset + 24, length - 24, (length - 24) // block * per_block) if block else None
        if length < 24:
            return None
        offset += (length + 7) & ~7
    return None


def _aiff(f) -> tuple[int, int, int] | None:
    """AIFF/AIFC: frames from the COMM chunk, bytes from the SSND chunk (after its offset field)."""
    offset, frames = 12, 0
    for _ in range(1000):
        f.seek(offset)
        cid, length = struct.unpack(">4sI", f.read(8))
        if cid == b"COMM" and length >= 6:
            frames = struct.unpack(">hI", f.read(6))[1]
        elif cid == b"SSND":
            skip = struct.unpack(">I", f.read(4))[0]
            return None if length >= PLACEHOLDER else (offset + 16 + skip, length - 8 - skip, frames)
        offset += 8 + length + (length & 1)
    return None


def _au(f, order: str) -> tuple[int, int, int] | None:
    """AU/SND: data offset, data size, encoding, rate, channels after the magic."""
    f.seek(4)
    start, length, encoding, _, channels = struct.unpack(order + "5I", f.read(20))
    width = AU_WIDTHS.get(encoding, 0) * channels
    return None if not width or length >= PLACEHOLDER else (start, length, length // width)


def _nist(f) -> tuple[int, int, int] | None:
    """NIST SPHERE (LDC's corpora: TIMIT, WSJ, Switchboard): a text header whose size is its second
    line, ``name -type value`` fields up to ``end_head``, then the samples; ``sample_count`` counts
    frames. A compressed one (shorten, wavpack) holds no fixed number of bytes per sample."""
    f.seek(0)
    lines = f.read(1 << 16).split(b"end_head")[0].decode("ascii", "replace").split("\n")
    fields = dict(parts[0::2] for parts in (line.split(None, 2) for line in lines[2:]) if len(parts) == 3)
    coding = fields.get("sample_coding", "pcm")
    if any(packed in coding for packed in ("shorten", "wavpack", "shortpack")) or "sample_n_bytes" not in fields:
        return None
    frames = int(fields.get("sample_count", 0))
    width = int(fields.get("channel_count", 1)) * int(fields["sample_n_bytes"])
    return (int(lines[1]), frames * width, frames) if width > 0 else None


def truncation(path: str | os.PathLike) -> tuple[int, int] | None:
    """(frames its header declares, frames the file holds) when ``path`` is a WAV, RF64, W64, AIFF/AIFC,
    AU or NIST SPHERE file whose data runs past the end of the file (an interrupted copy or download), else None.
    libsndfile silently reads such a file as far as it goes. Sizes a streaming writer leaves as
    placeholders (0, "unknown" such as 0xFFFFFFFF, 32-bit sizes of 2 GB and more) are not judged."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(16)
            if head[8:12] == b"WAVE" and head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64"):
                found = _riff(f, head[:4])
            elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
                found = _aiff(f)
            elif head[:4] in (b".snd", b"dns."):
                found = _au(f, ">" if head[:4] == b".snd" else "<")
            elif head == b"riff" + bytes.fromhex("2e91cf11a5d628db04c10000"):
                found = _w64(f)
            elif head[:8] == b"NIST_1A\n":
                found = _nist(f)
            else:
                return None
    except (OSError, struct.error, ValueError, OverflowError):  # a cut or absurd header (a 2**64 chunk length
        # makes seek fail): not judged here, libsndfile judges the file
        return None
    if found is None:
        return None
    start, length, frames = found
    present = max(size - start, 0)
    if frames <= 0 or not 0 < length < UNKNOWN64 or length <= present:
        return None
    return frames, present * frames // length


FRAMES_PER_BYTE = 1024
"""More frames than this per byte of file no codec holds (FLAC of digital silence: about 700): a larger
count in a header is "unknown" (FLAC's streaming writers leave 0, which libsndfile gives as 2**63 - 1)
or a lie. Such a file is refused with that reason instead of allocating the declared length (libsndfile
fails to seek at the end of it, so it cannot be read block by block either)."""


def _plausible(frames: int, path: str | os.PathLike) -> bool:
    try:
        return 0 <= frames <= max(os.path.getsize(path), 1) * FRAMES_PER_BYTE
    except OSError:
        return False


def _read_all(f: sf.SoundFile, dtype: str, path: str | os.PathLike) -> np.ndarray:
    """Every frame of the open file ``f``, (frames, channels). Read block by block where libsndfile
    cannot seek (GSM 6.10 in WAV, G.721: soundfile refuses to read "all" there); an :class:`AudioError`
    when the header's length cannot be true (:data:`FRAMES_PER_BYTE`)."""
    if f.seekable():
        if not _plausible(f.frames, path):
            unknown = f.frames >= 2**63 - 1
            raise AudioError(f"its header gives {'no length' if unknown else f'{f.frames:,} samples, more than the file can hold'} "
                             f"(a stream whose writer {'never filled it in' if unknown else 'wrote a wrong one'}?); "
                             "re-encode it to give it one")
        return f.read(dtype=dtype, always_2d=True)
    blocks = [f.read(1 << 18, dtype=dtype, always_2d=True)]
    while len(blocks[-1]):
        blocks.append(f.read(1 << 18, dtype=dtype, always_2d=True))
    return np.concatenate(blocks)


MP3_SLACK = 4 * 1152
"""Samples (at the file's rate) an MP3 may decode short of its header's count and still be whole:
encoder delay and padding a header without LAME's gapless fields leaves in the count."""


def _mp3_xing(path: str | os.PathLike) -> tuple[int | None, bool]:
    """(frames, continues) of the MP3 ``path``: the frame count its Xing/Info header states (LAME and
    most encoders write one; then libsndfile's length is the encoder's, not an estimate from the file
    size and first bitrate), None without one; and whether another MPEG stream starts where that
    header says the stream ends (MP3 files joined with ``cat``: libsndfile stops at the first's end)."""
    try:
        with open(path, "rb") as f:
            head = f.read(10)
            start = 0
            if head[:3] == b"ID3" and len(head) == 10:  # ID3v2 tag: a syncsafe size, maybe a footer
                start = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
                start += 10 if head[5] & 0x10 else 0
            f.seek(start)
            data = f.read(4096 + 64)
            for i in range(min(len(data) - 4, 4096)):  # the first frame header (padding may come first)
                if data[i] == 0xFF and data[i + 1] & 0xE0 == 0xE0:
                    version, mono = (data[i + 1] >> 3) & 3, (data[i + 3] >> 6) == 3
                    side = (17 if mono else 32) if version == 3 else (9 if mono else 17)
                    at = i + 4 + side
                    tag = data[at:at + 16]
                    if tag[:4] not in (b"Xing", b"Info") or len(tag) < 16 or not tag[7] & 1:
                        return None, False
                    frames = struct.unpack(">I", tag[8:12])[0]
                    if not tag[7] & 2:  # no stream size
                        return frames, False
                    f.seek(start + i + struct.unpack(">I", tag[12:16])[0])
                    after = f.read(4)
                    return frames, after[:3] == b"ID3" or _mpeg_frame_header(after)
    except (OSError, struct.error, ValueError, OverflowError):
        pass
    return None, False


def _mpeg_frame_header(b: bytes) -> bool:
    """Whether ``b`` starts with an MPEG audio frame header (sync, a layer, a bitrate and a rate)."""
    return (len(b) >= 4 and b[0] == 0xFF and b[1] & 0xE0 == 0xE0 and (b[1] >> 3) & 3 != 1 and (b[1] >> 1) & 3 != 0
            and 0 < b[2] >> 4 < 15 and (b[2] >> 2) & 3 != 3)


def mp3_declares_frames(path: str | os.PathLike) -> bool:
    """Whether the MP3 ``path`` opens with a Xing/Info header that states its frame count."""
    return _mp3_xing(path)[0] is not None


PIPE_TAIL = 1 << 18
"""Bytes at the end of a piped file (:func:`_read_piped`) during which it is decoded one MPEG frame at a
time: a read that meets the end inside a frame gives nothing back, so only that frame is lost."""


def _read_piped(path: str | os.PathLike, dtype: str) -> np.ndarray:
    """Every frame of ``path``, (frames, channels), decoded from a pipe that a thread fills with the
    file: libsndfile then decodes to the end of the stream instead of stopping at the length it
    estimated (an MP3 without a Xing/Info header: a variable-bitrate one lost up to 85% of its audio,
    a constant-bitrate one its last milliseconds). A stream that ends inside a frame (a cut file, a
    capture) is kept as far as it decodes, as a seekable read of it was."""
    read_end, write_end = os.pipe()
    near_end = threading.Event()

    def feed() -> None:
        try:
            with open(path, "rb") as src:
                left = os.fstat(src.fileno()).st_size
                while block := src.read(1 << 16):
                    if left <= PIPE_TAIL:
                        near_end.set()
                    left -= len(block)
                    view = memoryview(block)
                    while view:
                        view = view[os.write(write_end, view):]
        except OSError:  # the decoder stopped reading (an error): the pipe broke
            pass
        finally:
            near_end.set()
            os.close(write_end)

    feeder = threading.Thread(target=feed, name="lhb-audio-feed", daemon=True)
    feeder.start()
    try:
        with sf.SoundFile(read_end, closefd=False) as f:
            blocks: list[np.ndarray] = []
            while True:
                tail = near_end.is_set()
                try:  # 16384 frames decode from under 64 KB, less than the tail: no read spans its start
                    block = f.read(1152 if tail else 16384, dtype=dtype, always_2d=True)
                except sf.LibsndfileError:
                    if not (tail and blocks):
                        raise
                    break  # the end, inside a frame
                if not len(block):
                    break
                blocks.append(block)
            return np.concatenate(blocks) if blocks else np.zeros((0, f.channels), dtype)
    finally:
        os.close(read_end)  # the feeder, if still writing, gets EPIPE and ends
        feeder.join()


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """(N,) float32 mono waveform at 16 kHz, or :class:`AudioError` naming ``path`` and saying why not
    (``err.reason`` is the reason alone). Raises :class:`ResamplerUnavailable` when the file needs
    resampling and torchaudio is broken."""
    try:
        return read_audio(path)
    except AudioError as err:
        raise AudioError(err.reason, path) from None


def read_audio(path: str | os.PathLike) -> np.ndarray:
    """:func:`load_audio` for a caller that names the file itself: an :class:`AudioError`'s message is
    the reason alone."""
    check_regular(path)
    try:  # libsndfile says only "System error." for a file it may not open
        os.close(os.open(path, os.O_RDONLY))
    except OSError as err:
        raise AudioError(f"cannot read: {err.strerror or err}") from None
    try:  # bytes: soundfile cannot encode a str path holding undecodable (surrogate-escaped) bytes
        with sf.SoundFile(os.fsencode(path)) as f:
            rate = int(f.samplerate)
            check_rate(rate)  # from the header, before any sample is read
            cut = truncation(path) if f.format in HEADER_FORMATS else None
            declared, joined = _mp3_xing(path) if f.format == "MP3" else (None, False)
            if joined:
                raise AudioError("another MP3 stream follows the one its Xing/Info header describes (MP3 files joined "
                                 "with cat?), and libsndfile stops at the first one's end; re-encode it as one file")
            if cut is None:
                # float64 read as float32 would turn 1e300 into inf: read it whole, judged below
                dtype = "float64" if f.subtype == "DOUBLE" else "float32"
                data = _read_piped(path, dtype) if f.format == "MP3" and declared is None else _read_all(f, dtype, path)
                if declared is not None and len(data) + MP3_SLACK < f.frames:
                    cut = f.frames, len(data)
            if cut is not None:
                raise AudioError(f"truncated: its header declares {cut[0]} samples at {rate} Hz but the file ends "
                                 f"after {cut[1]} (an interrupted copy or download?)")
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise _decode_error(err) from None
    except OSError as err:
        raise AudioError(f"cannot read: {err.strerror or err}") from None
    if data.size == 0:
        size = os.path.getsize(path)
        raise AudioError("no samples" + (f" (its header says none, yet the file holds {size:,} bytes: a recording whose "
                                         "writer never filled in the length?)" if size > 8192 else ""))
    peak = sample_peak(data)
    if not math.isfinite(peak):
        raise AudioError("holds NaN or infinite samples")
    if peak > MAX_AMPLITUDE:
        raise AudioError(too_loud(peak))
    data = data.astype(np.float32, copy=False)
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != SAMPLE_RATE:
        wave = resample(wave, rate, path)
    if wave.shape[0] < MIN_SAMPLES:
        n = wave.shape[0]
        raise AudioError(f"too short: {n} sample{'' if n == 1 else 's'} at 16 kHz, at least {MIN_SAMPLES} (25 ms) are needed")
    return np.ascontiguousarray(wave, dtype=np.float32)


def audio_frames(path: str | os.PathLike) -> tuple[int, int] | None:
    """(frames, sample rate) from the header, or None when it cannot be read. Cheap: no decoding."""
    try:
        check_regular(path)  # a FIFO or device is never opened (it could block)
        with sf.SoundFile(os.fsencode(path)) as f:
            frames, rate = int(f.frames), int(f.samplerate)
    except Exception:  # noqa: BLE001 - any unreadable header just means "unknown"
        return None
    return (frames, rate) if MIN_RATE <= rate <= MAX_RATE and _plausible(frames, path) else None
