"""Protocols: a spec plus features -> a result (``verification``, ``megaface``)."""
