"""The shipped spec files: ``protocols/`` and ``baselines/`` of the source tree, packaged as data.

``pyproject.toml`` maps ``megabench._specs.protocols`` to the top-level ``protocols/`` folder and
``megabench._specs.baselines`` to ``baselines/`` (setuptools ``package-dir``), so a wheel carries the
TOML files and the MegaFace noise lists; :mod:`megabench.config` reads them with
:mod:`importlib.resources`. Nothing here is imported for its code.
"""
