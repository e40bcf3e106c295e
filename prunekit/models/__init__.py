"""Detector architectures: the YOLOv3 family and Darknet import."""

from prunekit.models.yolov3 import (
    FAMILY,
    Detector,
    build_arch,
    conv_layers,
    decode,
    default_img_size,
    default_input,
    head_conv_indices,
)

__all__ = ["FAMILY", "Detector", "build_arch", "conv_layers", "decode", "default_img_size",
           "default_input", "head_conv_indices"]
