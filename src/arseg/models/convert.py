"""Load the reference implementations' released checkpoints into this package's models.

Reference state-dict names are renamed onto ours; tensors are untouched (the layouts are the
same, see ``docs/models.md``):

* :func:`convert_lwrefinenet`: DrSleep/light-weight-refinenet ``rf_lw50/101/152``
  (``models/resnet.py``) -> :class:`~arseg.models.lwrefinenet.LWRefineNet`;
* :func:`convert_lwrefinenet_mbv2`: DrSleep ``mbv2`` (``models/mobilenet.py``) ->
  :class:`~arseg.models.lwrefinenet.LWRefineNetMobileNetV2`;
* :func:`convert_pspnet`: hszhao/semseg ``PSPNet`` (``model/pspnet.py``) ->
  :class:`~arseg.models.pspnet.PSPNet`.

Both accept what ``torch.load`` returns for the released files: a bare state dict or one
nested under ``"state_dict"``/``"model"``, with or without DataParallel's ``"module."``
prefix. Example::

    model = build_model("pspnet101", num_classes=40)
    ckpt = torch.load("train_epoch_50.pth", map_location="cpu")
    model.load_state_dict(convert_pspnet(ckpt))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torch import Tensor, nn

__all__ = [
    "convert_lwrefinenet",
    "convert_lwrefinenet_mbv2",
    "convert_pspnet",
    "load_reference_state_dict",
]

# a replacement: a re.sub template, or a function of the match (for renumbering)
Replacement = str | Callable[[re.Match[str]], str]


def _unwrap(state_dict: Mapping[str, object]) -> dict[str, Tensor]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a state dict (Mapping), got {type(state_dict).__name__}")
    for key in ("state_dict", "model"):
        inner = state_dict.get(key)
        if isinstance(inner, Mapping):
            state_dict = inner
            break
    out = {}
    for k, v in state_dict.items():
        out[k.removeprefix("module.")] = v
    return out


def _rename(
    state_dict: Mapping[str, object], rules: list[tuple[str, Replacement]], what: str
) -> dict[str, Tensor]:
    compiled = [(re.compile(p), r) for p, r in rules]
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in _unwrap(state_dict).items():
        for pattern, repl in compiled:
            if pattern.fullmatch(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"not a {what} state dict; unexpected keys: {unknown[:5]}")
    return out


_RESNET_BODY = [
    (r"(conv1|bn1)\.(.+)", r"encoder.\1.\2"),
    (r"(layer[1-4]\..+)", r"encoder.\1"),
]

# DrSleep names, deepest first: p_ims1d2_outl{1..4}_dimred, adapt_stage{2..4}_b2_joint_varout_dimred,
# mflow_conv_g{1..4}_pool.0.{n}_outvar_dimred, mflow_conv_g{1..3}_b3_joint_varout_dimred.
_LW_RULES = [
    *_RESNET_BODY,
    (r"p_ims1d2_outl([1-4])_dimred\.weight", r"dimred<\1>.weight"),
    (r"adapt_stage([2-4])_b2_joint_varout_dimred\.weight", r"adapt<\1>.weight"),
    (r"mflow_conv_g([1-4])_pool\.0\.([0-9]+)_outvar_dimred\.weight", r"crp<\1>.convs.[\2].weight"),
    (r"mflow_conv_g([1-3])_b3_joint_varout_dimred\.weight", r"out<\1>.weight"),
    (r"clf_conv\.(weight|bias)", r"classifier.\1"),
]


def _renumber(key: str) -> str:
    # The reference counts stages from the deepest (outl1/g1 = layer4, 1/32), ours by encoder
    # level (4 = layer4): level = 5 - g. Its CRP convs count from 1, ours from 0.
    key = re.sub(r"<([1-4])>", lambda m: str(5 - int(m.group(1))), key)
    return re.sub(r"\[([0-9]+)\]", lambda m: str(int(m.group(1)) - 1), key)


def convert_lwrefinenet(state_dict: Mapping[str, object]) -> dict[str, Tensor]:
    """DrSleep/light-weight-refinenet ``rf_lw*`` state dict -> :class:`LWRefineNet` names.

    Mapping (reference -> ours): ``conv1, bn1, layer1-4`` -> ``encoder.*``;
    ``p_ims1d2_outl{g}_dimred`` -> ``dimred{5-g}``;
    ``adapt_stage{g}_b2_joint_varout_dimred`` -> ``adapt{5-g}``;
    ``mflow_conv_g{g}_pool.0.{n}_outvar_dimred`` -> ``crp{5-g}.convs.{n-1}``;
    ``mflow_conv_g{g}_b3_joint_varout_dimred`` -> ``out{5-g}``; ``clf_conv`` -> ``classifier``.
    """
    renamed = _rename(state_dict, _LW_RULES, "DrSleep LW-RefineNet")
    return {_renumber(k): v for k, v in renamed.items()}


_PSP_RULES = [
    (r"layer0\.0\.(.+)", r"encoder.conv1.0.\1"),
    (r"layer0\.1\.(.+)", r"encoder.conv1.1.\1"),
    (r"layer0\.3\.(.+)", r"encoder.conv1.3.\1"),
    (r"layer0\.4\.(.+)", r"encoder.conv1.4.\1"),
    (r"layer0\.6\.(.+)", r"encoder.conv1.6.\1"),
    (r"layer0\.7\.(.+)", r"encoder.bn1.\1"),
    (r"(layer[1-4]\..+)", r"encoder.\1"),
    (r"ppm\.features\.([0-9]+)\.([12])\.(.+)", r"ppm.features.\1.\2.\3"),
    (r"cls\.([014])\.(.+)", r"head.\1.\2"),
    (r"aux\.([014])\.(.+)", r"aux_head.\1.\2"),
]


def convert_pspnet(state_dict: Mapping[str, object]) -> dict[str, Tensor]:
    """hszhao/semseg ``PSPNet`` state dict -> :class:`PSPNet` names.

    Mapping: ``layer0.{0,1,3,4,6}`` (deep stem convs/BNs) -> ``encoder.conv1.{0,1,3,4,6}``,
    ``layer0.7`` -> ``encoder.bn1``; ``layer1-4`` -> ``encoder.layer1-4``; ``ppm.features``
    unchanged; ``cls`` -> ``head``; ``aux`` -> ``aux_head``. Evaluation checkpoints without
    the ``aux`` head load into ``build_model(..., aux=False)``.
    """
    return _rename(state_dict, _PSP_RULES, "hszhao/semseg PSPNet")


# DrSleep InvertedResidualBlock.output = [1x1 expansion, 3x3 depthwise, 1x1 projection], each
# Sequential(conv, BN[, ReLU6]) -> timm InvertedResidual's modules
_MBV2_BLOCK = {
    ("0", "0"): "conv_pw",
    ("0", "1"): "bn1",
    ("1", "0"): "conv_dw",
    ("1", "1"): "bn2",
    ("2", "0"): "conv_pwl",
    ("2", "1"): "bn3",
}


def _mbv2_block(m: re.Match[str]) -> str:
    stage, index, part, sub, rest = m.groups()
    return f"encoder.blocks.{int(stage) - 2}.{index}.{_MBV2_BLOCK[part, sub]}.{rest}"


_MBV2_RULES: list[tuple[str, Replacement]] = [
    (r"layer1\.0\.weight", "encoder.conv_stem.weight"),
    (r"layer1\.1\.(.+)", r"encoder.bn1.\1"),
    (r"layer([2-8])\.([0-9]+)\.output\.([0-2])\.([01])\.(.+)", _mbv2_block),
    (r"conv([3-8])\.weight", lambda m: f"projs.{int(m[1]) - 3}.weight"),
    (
        r"crp([1-4])\.0\.([1-9][0-9]*)_outvar_dimred\.weight",
        lambda m: f"crps.{4 - int(m[1])}.convs.{int(m[2]) - 1}.weight",
    ),
    (r"conv_adapt([2-4])\.weight", lambda m: f"adapts.{4 - int(m[1])}.weight"),
    (r"segm\.(weight|bias)", r"classifier.\1"),
]


def convert_lwrefinenet_mbv2(state_dict: Mapping[str, object]) -> dict[str, Tensor]:
    """DrSleep/light-weight-refinenet ``mbv2`` state dict -> :class:`LWRefineNetMobileNetV2` names.

    Mapping (reference -> ours): ``layer1.{0,1}`` (stem conv, BN) -> ``encoder.conv_stem``,
    ``encoder.bn1``; ``layer{L}.{i}.output.{0,1,2}.{0,1}`` (expansion, depthwise, projection;
    conv, BN) -> ``encoder.blocks.{L-2}.{i}.{conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3}``;
    ``conv3..conv8`` (the 24 ... 320-channel projections) -> ``projs.0..5``;
    ``crp{g}.0.{n}_outvar_dimred`` -> ``crps.{4-g}.convs.{n-1}`` (``crp4`` runs at 1/32, our
    ``crps.0``); ``conv_adapt{g}`` -> ``adapts.{4-g}``; ``segm`` -> ``classifier``.
    """
    return _rename(state_dict, _MBV2_RULES, "DrSleep LW-RefineNet MobileNet-v2")


_CONVERTERS: dict[str, Callable[[Mapping[str, object]], dict[str, Tensor]]] = {
    "LWRefineNet": convert_lwrefinenet,
    "LWRefineNetMobileNetV2": convert_lwrefinenet_mbv2,
    "PSPNet": convert_pspnet,
}


def load_reference_state_dict(model: nn.Module, state_dict: Mapping[str, object]) -> nn.Module:
    """Convert a reference checkpoint for ``model``'s class and load it strictly.

    BatchNorm ``num_batches_tracked`` buffers, absent from checkpoints saved by old PyTorch
    versions, are the only keys allowed to be missing. Returns ``model``.
    """
    name = type(model).__name__
    if name not in _CONVERTERS:
        raise TypeError(f"no reference converter for {name}; available: {sorted(_CONVERTERS)}")
    converted = _CONVERTERS[name](state_dict)
    result = model.load_state_dict(converted, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"reference checkpoint does not fit {name}: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model
