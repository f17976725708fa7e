"""Metrics: pure functions, arrays in and typed results out.

``verification`` (the 10-fold pair protocol), ``identification`` (MegaFace ranks and TAR@FAR),
``streaming`` / ``search`` (the accumulators and score kernels that feed them).

Every metric warns :class:`DegenerateMetricWarning` and returns NaN when it is undefined for its input
(e.g. a fold without negative pairs); it never invents a number.
"""


class DegenerateMetricWarning(UserWarning):
    """A metric is undefined for this input (e.g. a fold without negative pairs); its value is NaN."""
