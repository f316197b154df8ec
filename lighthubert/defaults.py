"""Every default of the library's jobs, in one place and importable without torch: the extraction
job (:class:`lighthubert.job.ExtractJob`, ``lhb extract``), the k-means units
(:mod:`lighthubert.units`, ``lhb units``) and :mod:`lighthubert.convert` (``lhb convert``) take theirs from here, and ``--help`` shows them without
loading the model code."""

from __future__ import annotations

# ----------------------------------------------------------------------------- the choices

DTYPES = ("auto", "float32", "float16", "bfloat16")
"""Compute dtypes (``--dtype``)."""
SAVE_DTYPES = ("float32", "float16")
"""Stored dtypes (``--save-dtype``)."""
EXPORT_DTYPES = ("float32", "float16")
"""Weights and compute of an ``.onnx`` / ``.ts`` export (``lhb subnet --export-dtype``)."""
EXPORT_DTYPE = "float32"
"""The default of those; a ``.pt`` export keeps the stored weights."""
COMPRESSIONS = ("none", "gzip", "lzf")
CONVERT_FORMATS = ("fairseq", "npy", "kaldi")
"""What ``lhb convert`` writes."""

# ----------------------------------------------------------------------------- extraction

CHECKPOINT = "small"
LAYERS = "last"
DEVICE = "auto"
"""auto: CUDA when present, else the CPU (extraction and units)."""
DTYPE = "auto"
"""Compute dtype; auto: float16 on CUDA, float32 on the CPU."""
SAVE_DTYPE = "float32"
BATCH_SECONDS = {"cuda": 200.0, "cpu": 30.0}
"""Padded audio per batch, by device type."""
EXACT_SECONDS = {"cuda": 3600.0, "cpu": 120.0}
"""Length up to which files run exactly, by device type. Exact attention costs time quadratic in
length: on a GPU an hour fits (memory is linear); on a CPU 10 minutes took 6.4 times the windowed
run (BENCHMARKS.md, "Long files")."""
WINDOW_SECONDS = 60.0
CONTEXT_SECONDS = 10.0
"""Windowed mode, chosen from the measurements in BENCHMARKS.md ("Long files")."""
NUM_WORKERS = 2
"""Decoding threads."""
COMPRESSION = "none"
OUTPUT_FORMAT = "hdf5"
"""The storage backend (:mod:`lighthubert.storage`; HDF5 is the one there is)."""
FLUSH_SECONDS = 1.0
"""How often the segment being written is committed (at most this much work is lost to a kill); once a
run has gone on for FLUSH_SECONDS / FLUSH_SHARE, a share FLUSH_SHARE of its time so far instead."""
FLUSH_SHARE = 0.001
"""A long run commits every thousandth of its time so far (after 1,000 s at the default FLUSH_SECONDS):
a 64-hour run left a segment file a second, 230,000 of them for --resume to check and the join to open;
now about 6,400, and a kill loses at most 0.1% of the run."""
SEED = 0
"""For ``random:KIND`` checkpoints."""

# ----------------------------------------------------------------------------- k-means units

CLUSTERS = 500
"""Units (``lhb units learn --clusters``)."""
MAX_FRAMES = 1_000_000
"""Frames to learn centroids from."""
BATCH_SIZE = 10_000
"""Frames per mini-batch (fairseq's ``learn_kmeans.py`` default)."""
ITERATIONS = 100
"""Mini-batch steps (fairseq's default ``max_iter`` is 100 too, but counts passes over the data there)."""
KMEANS_SEED = 0
"""The frame sample, the k-means++ start and the batches."""

# ----------------------------------------------------------------------------- convert

CONVERT_FORMAT = "fairseq"
"""The layout ``lhb convert`` writes (fairseq's HuBERT simple_kmeans one)."""
SPLIT = "train"
"""The split named in the files ``lhb convert`` writes."""
NSHARD = 1
"""fairseq layout: shards of contiguous keys."""
