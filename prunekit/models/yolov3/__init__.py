"""YOLOv3 (Darknet-53, three heads), YOLOv3-tiny and the embedded yolov3-small, and Darknet
``.cfg`` + ``.weights`` import. Reached only through :mod:`prunekit.models.registry`.

- ``arch``: the layer lists; ``layers`` and ``detector``: the modules;
- ``transform``: the letterbox; ``boxes``: the one decoder and post-processing;
- ``loss``: the detection loss; ``evidence``: what DeepLIFT attributes;
- ``groups``: coupled filters; ``deploy``: the form ``bench`` times; ``darknet``: file import.
"""

from prunekit.models.yolov3.family import YOLOv3Family

FAMILY = YOLOv3Family()

__all__ = ["FAMILY"]
