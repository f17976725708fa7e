"""The ``--device`` option: checked before any work, one line when it cannot be used."""

from __future__ import annotations

from megabench.errors import MegabenchError


def check_device(device: str, *, option: str = "--device") -> str:
    """Return ``device`` when torch can use it here; else raise :class:`MegabenchError` saying why.

    Accepts what ``torch.device`` accepts (``cpu``, ``cuda``, ``cuda:K``, ``mps``); a CUDA device needs
    a CUDA build, a visible GPU and ``K`` below the GPU count.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise MegabenchError(f"{option} {device!r} is not a device; use cpu, cuda or cuda:K") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MegabenchError(f"{option} {device}: CUDA is not available here (torch {torch.__version__}, "
                                 "no GPU or a CPU-only build); use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise MegabenchError(f"{option} {device}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise MegabenchError(f"{option} {device}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise MegabenchError(f"{option} {device}: megabench runs on cpu, cuda or mps, not {dev.type}")
    return device
