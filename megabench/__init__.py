"""megabench: exact face-recognition benchmarks (10-fold verification, MegaFace C1) and the SRANet zoo.

Importing the package defines names and sets one environment default, nothing else: no device query, no
process group, no I/O. The default: ``OPENBLAS_THREAD_TIMEOUT=4`` unless the user set it. numpy's
OpenBLAS keeps its worker threads spinning for a long while after each GEMM (the build default), and in the
MegaFace stream those spinning threads steal the cores from the numba kernel that runs right after each
block's GEMM (measured at 1M on 2 cores: accumulator update 0.136 s -> 0.088 s per block, GEMM unchanged).
It takes effect only when megabench is imported before numpy (the ``megabench`` command always is).
"""

import os as _os

_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"
