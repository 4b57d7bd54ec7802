"""Third-party messages that a user would read as errors when nothing is wrong, kept quiet at the source.

bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community: No module named
'kernels'" when it is imported on a CPU with avx512_bf16, and it is imported by PEFT whenever it is
installed: so every LoRA run, every adapter load, printed it, though nothing uses 4-bit weights there.
The message only means that bitsandbytes' optional hub-downloaded CPU kernel is absent and its own
PyTorch 4-bit code is used instead (correct, slower). tunelab drops the message and remembers it; the
one path that uses 4-bit weights (qlora) says what it means in its own words (`bnb_kernel_note`).
Anything else bitsandbytes logs passes through untouched.
"""

from __future__ import annotations

import logging

_BNB_LOGGERS = ("bitsandbytes.backends.cpu.ops", "bitsandbytes")
_KERNEL_MESSAGE = "Failed to load CPU gemm_4bit_forward"
_seen: dict[str, str] = {}


class _DropBnbKernelMessage(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_KERNEL_MESSAGE):
            _seen["bnb_kernel"] = message
            return False
        return True


_FILTER = _DropBnbKernelMessage()


def install() -> None:
    """Attach the filters (idempotent; imports nothing, so bitsandbytes is not loaded by this)."""
    for name in _BNB_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def bnb_kernel_note() -> str | None:
    """What the dropped bitsandbytes message means, for a run that does use 4-bit weights."""
    if "bnb_kernel" not in _seen:
        return None
    return ("4-bit layers use bitsandbytes' built-in PyTorch kernels on this CPU (its faster avx512_bf16 "
            "kernel comes from the optional `kernels` package, which downloads it from the Hugging Face hub); "
            "results are the same, only slower")
