"""Where a job runs: device choice, numeric precision, reproducibility switches and where its log lines go."""

from __future__ import annotations

import inspect
import logging
import sys

import torch

from afo.errors import ConfigError

# Lightning's precision names this project accepts ("16-mixed" = fp16 autocast with a loss scaler).
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")


class RuntimeSettingError(ConfigError):
    """A device or precision setting this machine cannot honour; the message names the setting and the fix."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` = the first visible CUDA device if any, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:  # torch's message lists every device type it was built to know
        raise RuntimeSettingError(f"device {name!r}: not a device name; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeSettingError(f"device {name!r} asked for, but no CUDA device is visible; use auto or cpu")
    return device


def cuda_bf16_native() -> bool:
    """Whether the current CUDA device computes bfloat16 natively (Ampere, sm_80, and newer; ROCm GPUs).

    Not ``torch.cuda.is_bf16_supported()`` alone: by default it also answers True where bf16 is only
    emulated (e.g. a Turing RTX 2080 Ti, the paper's GPU), which runs but slowly.
    """
    if "including_emulation" in inspect.signature(torch.cuda.is_bf16_supported).parameters:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    # torch < 2.3 has no switch and counts emulation in: ask the compute capability as well.
    return bool(torch.cuda.is_bf16_supported()) and (
        bool(torch.version.hip) or torch.cuda.get_device_capability()[0] >= 8
    )


def resolve_precision(name: str, device: torch.device | str) -> str:
    """The Lightning ``precision`` for a job on ``device``.

    Args:
        name: ``"auto"`` or one of :data:`PRECISIONS` (the config's ``train.precision``).
        device: where the job trains (``resolve_device``'s answer, or ``"cpu"``/``"cuda"``); on CUDA the
            current device is asked (a job's GPUs are assumed to be alike).

    Returns:
        ``auto``: ``"bf16-mixed"`` on a GPU with native bf16, ``"16-mixed"`` (fp16 with loss scaling, as the
        paper trained on RTX 2080 Ti) on one without, ``"32-true"`` on the CPU. Any other name is returned
        as given once it is known to run here.

    Raises:
        RuntimeSettingError: an unknown name, fp16 autocast on the CPU (Lightning would quietly switch it to
            bf16), or bf16 on a GPU that only emulates it.
    """
    if name not in PRECISIONS:
        raise RuntimeSettingError(f"train.precision: {name!r} is not one of {list(PRECISIONS)}")
    device = torch.device(device)
    if device.type != "cuda":
        if name == "16-mixed":
            raise RuntimeSettingError(
                "train.precision: 16-mixed (fp16 autocast) does not run on the CPU; use auto, 32-true or bf16-mixed"
            )
        return "32-true" if name == "auto" else name
    if name == "auto":
        return "bf16-mixed" if cuda_bf16_native() else "16-mixed"
    if name.startswith("bf16") and not cuda_bf16_native():
        raise RuntimeSettingError(
            f"train.precision: {name} on a GPU without native bfloat16 (it would be emulated, slowly); use auto or 16-mixed"
        )
    return name


def log_to_stderr_unless_configured() -> None:
    """Send afo's INFO lines to stderr (the job's log) when the program configured no logging, as Lightning does
    for its own logger; a program that configures logging keeps full control."""
    afo_log = logging.getLogger("afo")
    if not afo_log.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        afo_log.addHandler(handler)
        afo_log.setLevel(logging.INFO)
