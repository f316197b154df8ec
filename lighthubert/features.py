"""The features file: kept as the import path of earlier versions. The format-independent parts live
in :mod:`lighthubert.storage`, the HDF5 writer, merge and reader in :mod:`lighthubert.storage.hdf5`."""

from .storage import (  # noqa: F401
    FORMAT,
    FORMAT_VERSION,
    FRAME_RATE,
    RUN_IDENTITY,
    OutputError,
    check_output_path,
    run_attrs,
)
from .storage.hdf5 import GROUP, FeatureWriter, _norm, describe, keys, merge  # noqa: F401
