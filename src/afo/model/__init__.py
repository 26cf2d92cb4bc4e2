"""The encoding model: ConvBlocks core, per-subject TopyNeck (RetinaMapper, LayerSelector) and VoxelHead.

Files, one question each: ``pe`` (how coordinates are encoded), ``conv`` (the shared core),
``retina`` (where and which layer a voxel reads), ``readout`` (how it is read, efficiently),
``neck`` (one subject's neck), ``head`` (the per-voxel regression), ``encoder`` (the whole model).
"""

from afo.model.conv import ConvBlock, ConvBlocks, ConvUnit
from afo.model.encoder import CoreOutput, EncodingModel, model_defaults
from afo.model.head import VoxelHead
from afo.model.neck import (
    LAYER_SELECTOR_ALIASES,
    LAYER_SELECTORS,
    RETINA_MAPPERS,
    GlobalPoolMLP,
    TopyNeck,
    canonical_layer_selector,
)
from afo.model.pe import CoordinateFrame, SinusoidalPE, fit_rescale, subject_frame
from afo.model.readout import bilinear_corners, efficient_readout, pixel_table, reference_readout
from afo.model.retina import FrozenRetinaMapper, LayerSelector, RetinaMapper, UniformLayerSelector

__all__ = [
    "LAYER_SELECTORS",
    "LAYER_SELECTOR_ALIASES",
    "RETINA_MAPPERS",
    "ConvBlock",
    "ConvBlocks",
    "ConvUnit",
    "CoordinateFrame",
    "CoreOutput",
    "EncodingModel",
    "FrozenRetinaMapper",
    "GlobalPoolMLP",
    "LayerSelector",
    "RetinaMapper",
    "SinusoidalPE",
    "TopyNeck",
    "UniformLayerSelector",
    "VoxelHead",
    "model_defaults",
    "bilinear_corners",
    "canonical_layer_selector",
    "efficient_readout",
    "fit_rescale",
    "pixel_table",
    "reference_readout",
    "subject_frame",
]
