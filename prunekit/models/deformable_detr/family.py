"""The Deformable DETR family: its members, fresh models, ``save_pretrained`` folders in and out,
and input specifications."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch

from prunekit.errors import ModelError
from prunekit.files import folder_atomically
from prunekit.models.base import COLOURS, MAX_INPUT_SIDE, Detector, Family, Option
from prunekit.models.deformable_detr.config import MEMBERS, config_dict, member_arch, offline
from prunekit.models.deformable_detr.detector import DeformableDETR


class DeformableDETRFamily(Family):
    """``deformable-detr`` and ``deformable-detr-small``, and HF ``save_pretrained`` folders."""

    name: ClassVar[str] = "deformable-detr"
    members: ClassVar[tuple[str, ...]] = tuple(MEMBERS)
    init_options: ClassVar[tuple[Option, ...]] = (
        Option("hf", Path, "A Hugging Face save_pretrained folder "
                           "(config.json + model.safetensors) to import.", imports=True),
    )
    export_options: ClassVar[tuple[Option, ...]] = (
        Option("hf", Path, "Write a Hugging Face save_pretrained folder "
                           "(not for compacted models)."),
    )
    small: ClassVar[dict[str, dict[str, Any]]] = {"deformable-detr-small": {"img_size": 64}}

    def build(self, arch: dict[str, Any], input_spec: dict[str, Any],
              classes: list[str]) -> Detector:
        return DeformableDETR(arch, input_spec, classes)

    def create(self, member: str, classes: list[str], *, img_size: int | None = None,
               grey: bool = False, options: dict[str, Any] | None = None) -> Detector:
        if options:
            raise ModelError(f"{member} has no option --{sorted(options)[0]}; Deformable "
                             f"DETR members take none")
        height, width = MEMBERS[member][1]
        if img_size is not None:  # the canvas height; the width keeps the member's aspect
            width = max(32, round(img_size * width / height / 32) * 32)
            height = img_size
        spec = self.input_spec(size=[height, width], colour="grey" if grey else "rgb")
        model = DeformableDETR(member_arch(member, classes), spec, classes)
        _init_transformer(model.detr)
        _init_heads(model.detr)
        return model

    def import_files(self, files: dict[str, Any], classes: list[str] | None, *,
                     img_size: int | None = None, grey: bool = False) -> Detector:
        folder = Path(files["hf"])
        hf = _from_pretrained(folder, _read_config(folder))
        labels = [hf.config.id2label.get(i, f"class{i}") for i in range(hf.config.num_labels)]
        if classes is not None and len(classes) != len(labels):
            raise ModelError(f"{folder} has {len(labels)} classes but {len(classes)} names were "
                             f"given; give one name per class or none")
        names = classes or labels
        arch = {"name": folder.name, "config": config_dict(hf.config), "batchnorm": "frozen",
                "widths": {}}
        # HF's image processor resizes to a shortest side of 800 and a longest of 1333.
        height = img_size or 800
        spec = self.input_spec(size=[height, round(height * 1333 / 800)],
                               colour="grey" if grey else "rgb")
        model = DeformableDETR(arch, spec, names)
        _load_into(model.detr, hf.state_dict(), folder)
        return model.eval()

    def input_spec(self, spec: dict[str, Any] | None = None, *, size: Any = None,
                   colour: str | None = None) -> dict[str, Any]:
        """Floats in [0, 1], fitted into a ``[height, width]`` canvas keeping the aspect ratio
        and padded right and bottom, ImageNet-normalised inside the model. Any size of at
        least 32 works (the pixel mask follows the backbone's strides); multiples of 32 waste
        nothing."""
        spec = dict(spec or {"size": [384, 1248], "colour": "rgb", "range": [0.0, 1.0],
                             "normalise": "imagenet",
                             "resize": "fit the canvas keeping the aspect ratio, pad right and "
                                       "bottom (pixel mask)"})
        if colour is not None:
            if colour not in COLOURS:
                raise ModelError(f"colour mode {colour!r} is unknown; use rgb or grey")
            spec["colour"] = colour
        if size is not None:
            if isinstance(size, int):  # `--img-size`: the height, at the model's aspect
                h, w = spec["size"]
                size = [size, max(32, round(size * w / h / 32) * 32)]
            if len(size) != 2 or any(int(s) != s or s < 32 for s in size):
                raise ModelError(f"input size {size} must be two whole numbers of pixels, at "
                                 f"least 32 (height, width)")
            if max(size) > MAX_INPUT_SIDE:
                raise ModelError(f"input size {size} is too large: each side at most "
                                 f"{MAX_INPUT_SIDE} pixels (--img-size is the height)")
            spec["size"] = [int(s) for s in size]
        return spec

    def export(self, model: Detector, fmt: str, out: Path) -> None:
        """Write ``model`` as a ``save_pretrained`` folder (``fmt`` ``hf``), atomically."""
        if fmt != "hf":
            raise ModelError(f"the deformable-detr family exports no format {fmt!r}")
        if model.arch.get("widths"):
            raise ModelError("this model is compacted: its pruned widths do not fit HF's "
                             "config (one width per kind of layer), so "
                             "DeformableDetrForObjectDetection cannot load it; export the "
                             "masked model (mask without --compact) instead")
        from transformers import DeformableDetrForObjectDetection

        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ModelError(f"{out} exists; remove it or choose another folder")
        with offline():
            hf = DeformableDetrForObjectDetection(model.config)
        state = {k[len("detr."):]: v for k, v in model.state_dict().items()
                 if k.startswith("detr.") and not k.endswith("num_batches_tracked")}
        _load_into(hf, state, Path("<model>"))
        with folder_atomically(out) as tmp, offline():
            hf.save_pretrained(tmp, safe_serialization=True)


def _init_transformer(detr: torch.nn.Module) -> None:
    """The original Deformable DETR's initialisation of everything past the backbone, which
    HF's (5.x) replaces by N(0, 0.02) for every linear layer, convolution and embedding: the
    50 query embeddings then start nearly identical and every reference point within 2 % of
    the image centre, and the transformer's layers start an order of magnitude smaller than
    Xavier's. Here, as in the original: Xavier-uniform matrices in the encoder and decoder
    layers and the input projections (zero biases), the deformable attention's own start
    (sampling offsets on a ring, uniform attention weights, which HF keeps), the query
    embeddings N(0, 1), Xavier reference points, and PyTorch's default for the heads' layers.
    From scratch on the synthetic KITTI scenes (1,100 steps, lr 5e-4, one thread) this lifted
    validation mAP50 from 0.40 to 0.67 (0.20 instead of 0.04 after 200 steps); with it, lr 1e-3
    trains faster still (0.696 after 1,100 steps on one thread, 0.684 after 1,150 on two in
    ``make detr-baseline``: float sums differ with the thread count)."""
    from torch.nn import init
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrMultiscaleDeformableAttention,
    )

    m = detr.model
    with torch.no_grad():
        for part in (m.encoder, m.decoder.layers):
            for p in part.parameters():
                if p.dim() > 1:
                    init.xavier_uniform_(p)
        for mod in m.modules():
            if isinstance(mod, DeformableDetrMultiscaleDeformableAttention):
                mod.sampling_offsets.weight.zero_()
                mod.attention_weights.weight.zero_()
                mod.attention_weights.bias.zero_()
        for proj in m.input_proj:
            init.xavier_uniform_(proj[0].weight)
            proj[0].bias.zero_()
        if getattr(m, "reference_points", None) is not None:
            init.xavier_uniform_(m.reference_points.weight)
            m.reference_points.bias.zero_()
        if getattr(m, "query_position_embeddings", None) is not None:
            m.query_position_embeddings.weight.normal_()
        for lin in (getattr(m, "enc_output", None), getattr(m, "pos_trans", None)):
            if lin is not None:
                init.xavier_uniform_(lin.weight)
                lin.bias.zero_()
        for layer in list(detr.class_embed) + [x for h in detr.bbox_embed for x in h.layers]:
            layer.reset_parameters()


def _init_heads(detr: torch.nn.Module) -> None:
    """The original Deformable DETR's head initialisation, which HF's (5.x) leaves out: class
    biases at the prior of 1 % (so the focal loss does not start from 0.5 for every query and
    class), the box heads' last layer at zero, and the first box head's size outputs at −2
    (boxes start at sigmoid(−2) ≈ 12 % of the canvas around their reference points)."""
    import math

    prior = -math.log((1 - 0.01) / 0.01)
    with torch.no_grad():
        for head in detr.class_embed:
            head.bias.fill_(prior)
        for head in detr.bbox_embed:
            head.layers[-1].weight.zero_()
            head.layers[-1].bias.zero_()
        detr.bbox_embed[0].layers[-1].bias[2:] = -2.0


def _read_config(folder: Path) -> dict[str, Any]:
    """A ``save_pretrained`` folder's config, checked: Deformable DETR, HF's own ResNet
    backbone, safetensors weights."""
    if not folder.is_dir():
        raise ModelError(f"--hf {folder} is not a folder; give the folder `save_pretrained` "
                         f"wrote (config.json and model.safetensors)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise ModelError(f"{folder} has no config.json; give the folder `save_pretrained` "
                         f"wrote") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder}/config.json cannot be read ({e}); write it again") from None
    if not isinstance(config, dict) or config.get("model_type") != "deformable_detr":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise ModelError(f"{folder} holds a {kind!r} model, not Deformable DETR "
                         f"(model_type 'deformable_detr'); prunekit imports Deformable DETR")
    backbone = config.get("backbone_config") or {}
    if not isinstance(backbone, dict) or backbone.get("model_type") != "resnet":
        backbone = backbone if isinstance(backbone, dict) else {}
        kind = config.get("backbone") or backbone.get("model_type")
        raise ModelError(f"{folder}'s backbone is {kind!r}, which needs timm or a download; "
                         f"prunekit builds HF's own ResNet backbone only (a backbone_config of "
                         f"model_type 'resnet')")
    _check_sizes(config, folder)
    if not (folder / "model.safetensors").exists():
        other = [p.name for p in folder.iterdir() if p.name != "config.json"]
        has = f" (it has {', '.join(sorted(other))})" if other else ""
        raise ModelError(f"{folder} has no model.safetensors{has}; prunekit reads single-file "
                         f"safetensors weights only (it never unpickles)")
    return config


# config.json fields that size tensors: each a whole number, at least 1.
_SIZES = ("d_model", "encoder_layers", "decoder_layers", "encoder_ffn_dim", "decoder_ffn_dim",
          "encoder_attention_heads", "decoder_attention_heads", "num_queries",
          "num_feature_levels", "encoder_n_points", "decoder_n_points", "num_labels")
# More than this is a typo in config.json (the reference model has 40 million parameters), and
# building it would exhaust memory before anything could say so.
MAX_PARAMETERS = 2_000_000_000
MAX_BLOCKS = 1000  # residual blocks in the backbone


def _check_sizes(config: dict[str, Any], folder: Path) -> None:
    """The sizes in config.json whole and positive, and the transformer they describe of a
    size that can be built (a rough count: attention, feed-forward and query weights)."""
    sizes = {}
    for key in _SIZES:
        value = config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{folder}/config.json: {key} is {value!r}; expected a whole "
                             f"number of at least 1; give the folder `save_pretrained` wrote")
        sizes[key] = value
    d = sizes["d_model"]
    rough = (sizes["encoder_layers"] * (4 * d * d + 2 * d * sizes["encoder_ffn_dim"])
             + sizes["decoder_layers"] * (8 * d * d + 2 * d * sizes["decoder_ffn_dim"])
             + 2 * d * sizes["num_queries"] + d * sizes["num_labels"])
    rough += _backbone_rough(config["backbone_config"], folder)
    if rough > MAX_PARAMETERS:
        raise ModelError(f"{folder}/config.json describes about {rough:,} weights, more than "
                         f"{MAX_PARAMETERS:,}; check d_model, the layer counts, the "
                         f"feed-forward sizes, num_queries and the backbone's hidden_sizes, "
                         f"depths and embedding_size")


def _backbone_rough(backbone: dict[str, Any], folder: Path) -> int:
    """The ResNet backbone's sizes whole and positive, and a generous count of its weights
    (every block as two 3 × 3 convolutions of its stage's width; HF's defaults where a size is
    not given)."""
    def whole(key: str, value: Any) -> int:  # noqa: ANN401 (any JSON value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{folder}/config.json: backbone_config.{key} is {value!r}; "
                             f"expected whole numbers of at least 1; give the folder "
                             f"`save_pretrained` wrote")
        return value

    sizes = {}
    for key, default in (("hidden_sizes", [256, 512, 1024, 2048]), ("depths", [3, 4, 6, 3])):
        values = backbone.get(key, default)
        if not isinstance(values, list) or not values:
            raise ModelError(f"{folder}/config.json: backbone_config.{key} is {values!r}; "
                             f"expected a list of whole numbers; give the folder "
                             f"`save_pretrained` wrote")
        sizes[key] = [whole(key, v) for v in values]
    stem = whole("embedding_size", backbone.get("embedding_size", 64)) \
        * whole("num_channels", backbone.get("num_channels", 3)) * 49
    if sum(sizes["depths"]) > MAX_BLOCKS:
        raise ModelError(f"{folder}/config.json: backbone_config.depths {sizes['depths']} add "
                         f"up to more than {MAX_BLOCKS} blocks (ResNet-152 has 50); check them")
    # HF pairs the stages' widths and depths as zip does: the shorter list decides
    return stem + sum(18 * width * width * depth
                      for width, depth in zip(sizes["hidden_sizes"], sizes["depths"],
                                              strict=False))


def _from_pretrained(folder: Path, config: dict[str, Any]):
    """HF's own loading of the folder (its key renames and tied weights), offline, with every
    tensor accounted for."""
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

    config = {**config, "use_timm_backbone": False, "use_pretrained_backbone": False,
              "disable_custom_kernels": True}
    try:
        with offline():
            hf, info = DeformableDetrForObjectDetection.from_pretrained(
                folder, config=DeformableDetrConfig.from_dict(config), local_files_only=True,
                output_loading_info=True, use_safetensors=True)
    except Exception as e:  # noqa: BLE001  HF's checks of a config raise errors of any type
        if "mismatched_sizes" in str(e):  # HF refuses tensors of other shapes
            raise ModelError(f"{folder}: the weights do not fit config.json (tensor shapes "
                             f"differ from what it builds); give the folder `save_pretrained` "
                             f"wrote for this model") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{folder} cannot be loaded as Deformable DETR ({first}); give the "
                         f"folder `save_pretrained` wrote for this config") from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("num_batches_tracked")]
    problems = [("mismatched", info.get("mismatched_keys", [])),
                ("unexpected", info.get("unexpected_keys", [])), ("missing", missing)]
    for what, keys in problems:
        if keys:
            keys = sorted(keys, key=str)
            first = keys[0] if isinstance(keys[0], str) else keys[0][0]
            raise ModelError(f"{folder}: the weights do not fit config.json ({len(keys)} "
                             f"{what} tensors, e.g. {first!r}); give the folder "
                             f"`save_pretrained` wrote for this model")
    return hf


def _load_into(hf: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load HF-named tensors into an HF model: every tensor must fit; only tied copies (when
    one of their names is present) and BatchNorm counters may be missing."""
    own = hf.state_dict()
    tied = _tied_names(hf)
    mismatched = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(
        own[k].shape)]
    if mismatched:
        k = mismatched[0]
        raise ModelError(f"{source}: tensor {k!r} has shape {list(state[k].shape)} but the "
                         f"config builds {list(own[k].shape)}; the weights do not belong to "
                         f"this config.json")
    full = dict(state)
    for name in own:
        present = [n for n in tied.get(name, ()) if n in state]
        if name not in full and present:
            full[name] = state[present[0]]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in full and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        what = f"unexpected {unexpected[0]!r}" if unexpected else f"missing {missing[0]!r}"
        raise ModelError(f"{source}: the weights do not fit the config ({what}; "
                         f"{len(missing)} missing, {len(unexpected)} unexpected); give the "
                         f"folder `save_pretrained` wrote for this model")
    hf.load_state_dict(full, strict=False)


def _tied_names(model: torch.nn.Module) -> dict[str, list[str]]:
    """Name → every name of the same tensor, for every tied tensor."""
    by_id: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        by_id.setdefault(id(t), []).append(name)
    return {name: names for names in by_id.values() if len(names) > 1 for name in names}
