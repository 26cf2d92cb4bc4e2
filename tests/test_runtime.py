"""Device and precision choice (afo.runtime), with the GPU's bf16 capability monkeypatched."""

from __future__ import annotations

import pytest
import torch

from afo.errors import UserError
from afo.runtime import PRECISIONS, resolve_precision


def _gpu(monkeypatch, native_bf16: bool) -> None:
    """Pretend the current CUDA device has (Ampere and newer) or lacks (Turing: emulated only) native bf16."""

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native_bf16 or including_emulation  # Turing "supports" bf16 only by emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


def test_auto_picks_bf16_on_ampere_fp16_on_turing_fp32_on_cpu(monkeypatch):
    _gpu(monkeypatch, native_bf16=True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16-mixed"
    assert resolve_precision("auto", "cuda:0") == "bf16-mixed"
    _gpu(monkeypatch, native_bf16=False)
    assert resolve_precision("auto", "cuda") == "16-mixed"  # not fooled by emulated bf16
    assert resolve_precision("auto", torch.device("cpu")) == "32-true"


def test_explicit_names_pass_through_after_validation(monkeypatch):
    _gpu(monkeypatch, native_bf16=True)
    for name in PRECISIONS[1:]:
        assert resolve_precision(name, "cuda") == name
    _gpu(monkeypatch, native_bf16=False)
    assert resolve_precision("16-mixed", "cuda") == "16-mixed"
    assert resolve_precision("32-true", "cuda") == "32-true"
    with pytest.raises(UserError, match="without native bfloat16.*16-mixed"):
        resolve_precision("bf16-mixed", "cuda")
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # CPU autocast does bf16
    with pytest.raises(UserError, match="does not run on the CPU"):
        resolve_precision("16-mixed", "cpu")
    with pytest.raises(UserError, match="train.precision: 'fp16'"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "16-mixed"), ((8, 0), "bf16-mixed")])
def test_auto_on_torch_without_the_emulation_switch(monkeypatch, capability, expected):
    """torch < 2.3: is_bf16_supported() takes no argument and counts emulation in; the capability decides."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None)
    assert resolve_precision("auto", "cuda") == expected
