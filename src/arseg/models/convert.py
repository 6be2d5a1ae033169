"""Load the reference implementations' released checkpoints into this package's models.

Reference state-dict names are renamed onto ours; tensors are untouched (the layouts are the
same, see ``docs/models.md``):

* :func:`convert_lwrefinenet`: DrSleep/light-weight-refinenet ``rf_lw50/101/152``
  (``models/resnet.py``) -> :class:`~arseg.models.lwrefinenet.LWRefineNet`;
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

__all__ = ["convert_lwrefinenet", "convert_pspnet", "load_reference_state_dict"]


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
    state_dict: Mapping[str, object], rules: list[tuple[str, str]], what: str
) -> dict[str, Tensor]:
    compiled: list[tuple[re.Pattern[str], str]] = [(re.compile(p), r) for p, r in rules]
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


_CONVERTERS: dict[str, Callable[[Mapping[str, object]], dict[str, Tensor]]] = {
    "LWRefineNet": convert_lwrefinenet,
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
