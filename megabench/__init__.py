"""megabench: exact face-recognition benchmarks (10-fold verification, MegaFace C1) and the SRANet zoo.

Importing the package does nothing but define names: no device query, no process group, no I/O.
"""

__version__ = "0.1.0"
