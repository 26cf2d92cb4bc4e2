"""ConvBlocks: the trainable convolutions on top of the cached frozen backbone features.

Paper (section 4): "three zero-padded 5x5 convolutions with skip connection and LayerNorm, C = 768;
the last convolution layer reduces the dimension to D = 256". One block per tapped backbone layer
(layers may differ in channel count and size, as in a CNN), shared by all subjects. The core never
knows how many voxels or subjects there are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm's ``LayerNorm2d``: same parameters, eps and result).

    Written here rather than imported from timm because importing timm loads torchvision (~2 s), and every job
    that reads a model file (evaluation, prediction, dark knowledge) imports this module without needing a backbone.

    Shapes: ``[B, C, h, w] -> [B, C, h, w]``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvUnit(nn.Module):
    """One residual unit: ``skip(x) + SiLU(LayerNorm2d(conv_kxk(x)))``.

    The skip is the identity when the channel count is kept and a 1x1 projection when it changes
    (the last unit of a block reduces ``width`` to ``out_dim``). Zero padding keeps ``h x w``.

    Shapes: ``[B, in_channels, h, w] -> [B, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            # An even kernel cannot be zero-padded symmetrically: the map would shift by half a pixel
            # and the RetinaMapper's grid would no longer line up with the image.
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = LayerNorm2d(out_channels)
        self.act = nn.SiLU()
        self.skip: nn.Module = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.act(self.norm(self.conv(x)))


class ConvBlock(nn.Module):
    """``n_convs`` residual units for one tapped layer: ``C -> width -> ... -> width -> out_dim``.

    Shapes: ``[B, in_channels, h, w] -> [B, out_dim, h, w]``.
    """

    def __init__(self, in_channels: int, width: int, out_dim: int, n_convs: int, kernel_size: int) -> None:
        super().__init__()
        if n_convs < 1:
            raise ValueError(f"n_convs must be >= 1, got {n_convs}")
        channels = [in_channels] + [width] * (n_convs - 1) + [out_dim]
        self.units = nn.Sequential(*(ConvUnit(a, b, kernel_size) for a, b in zip(channels[:-1], channels[1:])))

    def forward(self, x: Tensor) -> Tensor:
        return self.units(x)


class ConvBlocks(nn.Module):
    """One :class:`ConvBlock` per tapped backbone layer (own weights per layer).

    Args:
        in_channels: channel count ``C_l`` of each tapped layer.
        width, out_dim, n_convs, kernel_size: see :class:`ConvBlock`.

    Shapes: list over layers of ``[B, C_l, h_l, w_l]`` -> list of ``[B, out_dim, h_l, w_l]``.
    Inputs are cast to the blocks' parameter dtype (the feature cache is float16).
    """

    def __init__(self, in_channels: Sequence[int], width: int, out_dim: int, n_convs: int, kernel_size: int) -> None:
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError("at least one layer is needed")
        self.out_dim = out_dim
        self.blocks = nn.ModuleList(ConvBlock(c, width, out_dim, n_convs, kernel_size) for c in in_channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} feature layers, got {len(features)}")
        dtype = next(self.parameters()).dtype
        return [block(f.to(dtype)) for block, f in zip(self.blocks, features)]
