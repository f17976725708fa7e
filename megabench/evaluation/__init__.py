"""Evaluation: a protocol spec (top-level ``protocols/*.toml``) plus features -> a result.

Kinds: ``verification``, ``megaface``. Named ``evaluation`` so that it is not confused with the top-level
``protocols/`` data folder.
"""
