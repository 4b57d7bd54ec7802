"""bitsandbytes' missing-kernel message is dropped (and remembered for qlora); its other messages pass."""

from __future__ import annotations

import logging
import subprocess
import sys

from tunelab import noise

KERNEL_MESSAGE = ("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. "
                  "Please make sure you already `pip install kernels` and the kernels >= 0.11.1")


def test_the_kernel_message_is_dropped_and_explained(caplog):
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning(KERNEL_MESSAGE)
        logger.warning("something else went wrong")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["something else went wrong"]
    assert "built-in PyTorch kernels" in noise.bnb_kernel_note()


def test_importing_peft_after_tunelab_prints_nothing_about_kernels():
    """In a fresh interpreter, as a user's run starts: on a CPU with avx512_bf16 bitsandbytes logs the
    message while PEFT imports it (on other CPUs it never does, and this passes either way)."""
    proc = subprocess.run([sys.executable, "-c", "import tunelab, peft, bitsandbytes"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "gemm_4bit_forward" not in proc.stderr and "kernels" not in proc.stderr
