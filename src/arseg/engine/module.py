"""The LightningModule: any model of the zoo trained with CE, weighted loss terms and aux losses.

Loss per step::

    total = CE(main) + sum_t w_t(step) * term_t(main) + sum_k aux_weight_k * CE(aux_k)

The terms and their weight schedules come from the config (:mod:`arseg.engine.objective`): AR
from ``loss.lambda_ar`` (as always) and any of ``loss.terms`` (Lovasz, RMI, AAF, Dice, AR);
:class:`arseg.losses.CompositeLoss` computes the total from the weights of the step. CE uses the
class weights and ignore index of the config, on logits resized bilinearly to the label size
(the model's ``align_corners`` convention, also used for the validation/test upsampling); AR
samples the main logits directly, the other terms take the resized logits. A term at weight 0
(AR with ``lambda_ar = 0``) is still computed (without grad) and logged. Each step logs
``train/<term>`` and its weight ``train/lambda_<term>`` (``train/ar``, ``train/lambda_ar``);
weights are functions of the global step and the run's total steps, so a resumed run gets the
same values.

Optimiser: SGD with momentum, two parameter groups (``model.encoder`` at ``lr *
encoder_lr_mult``, everything else at ``lr``) and the poly schedule ``lr * (1 - step / total)
** power`` set before every step from ``global_step`` (so a resumed run follows the same curve).
Randomness inside a step (dropout) is reseeded from ``(seed, global_step, rank)``.

Validation: mIoU, pixel accuracy, per-class IoU (torchmetrics confusion matrix, synced over
processes, ignore index dropped) on logits upsampled to the label size, the AR loss of the
native-resolution logits averaged over images (``val/ar``) and every other term's value averaged
over batches (``val/<term>``). Testing (``arseg eval``) also keeps per-image confusion matrices
and Boundary IoU counts (:func:`~arseg.engine.metrics.boundary_counts`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from .inference import model_align_corners, predict_logits, upsample_logits
from .metrics import BOUNDARY_RATIO, SegmentationMetrics, boundary_counts, confusion_matrix

__all__ = ["SegmentationModule"]


def _main_and_aux(out: Any) -> tuple[Tensor, dict[str, Tensor]]:
    if isinstance(out, Tensor):
        return out, {}
    return out.logits, dict(out.aux)


class SegmentationModule(L.LightningModule):
    """Train / validate / test a segmentation model from a resolved config.

    Args:
        cfg: resolved config (``cfg['model']['num_classes']`` set).
        class_names: names of the classes (for ``val/iou/<name>``); default ``class_0``...
        palette: one RGB triple per class, stored in checkpoints for ``arseg predict``.
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        class_names: tuple[str, ...] | list[str] | None = None,
        palette: list[tuple[int, int, int]] | None = None,
    ) -> None:
        super().__init__()
        from arseg.losses import CompositeLoss
        from arseg.models import build_model

        from .objective import resolve_terms

        self.cfg = cfg
        mcfg, lcfg = cfg["model"], cfg["loss"]
        num_classes = int(mcfg["num_classes"])
        self.num_classes = num_classes
        self.class_names = (
            tuple(class_names)
            if class_names is not None
            else tuple(f"class_{i}" for i in range(num_classes))
        )
        self.palette = (
            [tuple(int(v) for v in rgb) for rgb in palette] if palette is not None else None
        )
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.model = build_model(
            mcfg["name"], num_classes=num_classes, pretrained=mcfg["pretrained"], **mcfg["options"]
        )
        self.channels_last = bool(cfg["trainer"].get("channels_last", False))
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if lcfg["class_weight"] is not None and len(lcfg["class_weight"]) != num_classes:
            raise ValueError(
                f"loss.class_weight has {len(lcfg['class_weight'])} entries, the model {num_classes} classes"
            )
        self.terms = resolve_terms(lcfg)
        self.criterion = CompositeLoss(
            {name: term.options for name, term in self.terms.items()},
            class_weight=lcfg["class_weight"],
            ignore_index=lcfg["ignore_index"],
            align_corners=model_align_corners(self.model),
        )
        self.ignore_index = int(lcfg["ignore_index"])
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index=self.ignore_index)
        self.val_ar = MeanMetric()
        # the other terms' values on val (AR's is per image, as it always was)
        self.val_terms = nn.ModuleDict({name: MeanMetric() for name in self.terms if name != "ar"})
        self.test_confusions: list[np.ndarray] = []
        self.test_boundary: list[np.ndarray] = []  # per batch (B, 2, C) Boundary IoU I and U
        self.boundary_ratio = BOUNDARY_RATIO  # band width / image diagonal (arseg eval sets it)
        self.test_names: list[int] = []

    # ------------------------------------------------------------------ helpers
    def forward(self, x: Tensor) -> Any:
        return self.model(x)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Every stage's images (train, val, test, predict) in the model's memory format.
        if self.channels_last and isinstance(batch, (tuple, list)) and batch:
            images = batch[0].contiguous(memory_format=torch.channels_last)
            return type(batch)([images, *batch[1:]])
        return batch

    def train(self, mode: bool = True) -> SegmentationModule:
        super().train(mode)
        if mode:
            self._freeze_bn()
        return self

    def _freeze_bn(self) -> None:
        """With ``model.freeze_bn``, keep every BatchNorm in eval mode (fixed statistics)."""
        if self.cfg["model"]["freeze_bn"]:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # Lightning does not call ``train()`` when fitting starts and, after validation, restores
    # each submodule's own flag: the freeze is applied again at both points.
    def on_train_start(self) -> None:
        self._freeze_bn()

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()
        self._freeze_bn()

    def _ce(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.criterion.cross_entropy(logits, target)

    def _ar(self, logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        return self.criterion.term("ar", logits, target, reduction=reduction)

    def _term_weights(self) -> dict[str, float]:
        """Every term's weight of this step (its schedule): a function of global_step only."""
        from .objective import term_weights

        return term_weights(
            self.terms, self.global_step, int(self.trainer.estimated_stepping_batches)
        )

    def _poly_factor(self) -> float:
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return max(0.0, 1.0 - self.global_step / total) ** self.cfg["optim"]["poly_power"]

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout & co. depend only on (seed, step, rank): exact after a resume, whatever ran before.
        seed = (int(self.cfg["seed"]) * 1_000_003 + self.global_step * 97 + self.global_rank) % (
            2**31 - 1
        )
        torch.manual_seed(seed)
        factor = self._poly_factor()
        for group in self.optimizers().optimizer.param_groups:  # type: ignore[union-attr]
            group["lr"] = group["initial_lr"] * factor

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, target = batch
        logits, aux = _main_and_aux(self.model(images))
        lambdas = self._term_weights()
        total, ce, values = self.criterion(logits, target, lambdas)
        aux_logged: dict[str, Tensor] = {}
        if self.cfg["loss"]["aux"]:
            weights = getattr(self.model, "aux_weights", {})
            for name, aux_logits in aux.items():
                aux_ce = self._ce(aux_logits, target)
                total = total + float(weights.get(name, 0.0)) * aux_ce
                aux_logged[f"train/aux/{name}"] = aux_ce.detach()
                self.log(f"train/aux/{name}", aux_ce.detach(), on_step=True, on_epoch=False)
        bs = images.shape[0]
        self.log(
            "train/loss", total.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=bs
        )
        self.log("train/ce", ce.detach(), on_step=True, on_epoch=False, batch_size=bs)
        terms_logged: dict[str, Any] = {}
        for name, value in values.items():
            terms_logged[f"train/{name}"] = value.detach()
            terms_logged[f"train/lambda_{name}"] = lambdas[name]
            self.log(
                f"train/{name}",
                value.detach(),
                on_step=True,
                on_epoch=False,
                prog_bar=name == "ar",
                batch_size=bs,
            )
            self.log(
                f"train/lambda_{name}", lambdas[name], on_step=True, on_epoch=False, batch_size=bs
            )
        lr = self.optimizers().optimizer.param_groups[0]["lr"]  # type: ignore[union-attr]
        self.log("lr", lr, on_step=True, on_epoch=False, batch_size=bs)
        # Lightning saves step checkpoints before it hands this step's values to the loggers: the
        # checkpoint carries them, so a run killed in between still logs every step once.
        self._last_train_row = {
            "step": self.global_step,
            "epoch": self.current_epoch,
            "train/loss": total.detach(),
            "train/ce": ce.detach(),
            **terms_logged,
            "lr": lr,
            **aux_logged,
        }
        return total

    def configure_optimizers(self) -> torch.optim.Optimizer:
        ocfg = self.cfg["optim"]
        encoder = getattr(self.model, "encoder", None)
        enc_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
        enc = [p for p in self.model.parameters() if p.requires_grad and id(p) in enc_ids]
        dec = [p for p in self.model.parameters() if p.requires_grad and id(p) not in enc_ids]
        groups = [{"params": dec, "lr": ocfg["lr"], "initial_lr": ocfg["lr"], "name": "decoder"}]
        if enc:
            lr_enc = ocfg["lr"] * ocfg["encoder_lr_mult"]
            groups.append({"params": enc, "lr": lr_enc, "initial_lr": lr_enc, "name": "encoder"})
        return torch.optim.SGD(
            groups,
            lr=ocfg["lr"],
            momentum=ocfg["momentum"],
            weight_decay=ocfg["weight_decay"],
            nesterov=ocfg["nesterov"],
        )

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, target = batch
        logits, _ = _main_and_aux(self.model(images))
        self._update_ar(logits, target)
        up = upsample_logits(logits, target.shape[-2:], self.criterion.align_corners)
        self.val_metrics.update(up.argmax(1), target)
        self._update_terms(logits, up, target)

    def _update_terms(self, native: Tensor, up: Tensor, target: Tensor) -> None:
        """The values of the terms other than AR on val, each on the logits it trains on
        (native ones for the terms that sample them, e.g. AAF; ``up`` at the label size)."""
        if (target != self.ignore_index).any():
            for name, metric in self.val_terms.items():
                value = self.criterion.term(name, native, target, label_size_logits=up)
                metric.update(value, weight=target.shape[0])

    def _update_ar(self, logits: Tensor, target: Tensor) -> None:
        per_image = self._ar(logits, target, reduction="none")
        has_label = (target != self.ignore_index).flatten(1).any(1)
        if bool(has_label.any()):
            self.val_ar.update(per_image[has_label])

    def _log_scores(self, prefix: str) -> dict[str, float]:
        scores = self.val_metrics.compute()
        ar = self.val_ar.compute() if self.val_ar.update_count > 0 else torch.tensor(float("nan"))
        values = {
            f"{prefix}/miou": float(scores["miou"]),
            f"{prefix}/pixel_acc": float(scores["pixel_acc"]),
            f"{prefix}/ar": float(ar),
        }
        for name, metric in self.val_terms.items():
            values[f"{prefix}/{name}"] = (
                float(metric.compute()) if metric.update_count > 0 else float("nan")
            )
            metric.reset()
        for name, iou in zip(self.class_names, scores["iou"].tolist()):
            values[f"{prefix}/iou/{name}"] = iou
        for key, value in values.items():
            self.log(
                key, value, prog_bar=key == f"{prefix}/miou", sync_dist=False, rank_zero_only=False
            )
        self.val_metrics.reset()
        self.val_ar.reset()
        return values

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    # ------------------------------------------------------------------ test (arseg eval)
    def on_test_epoch_start(self) -> None:
        self.test_confusions = []
        self.test_boundary = []
        self.test_results: dict[str, float] = {}

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        images, target = batch[0], batch[1]
        ecfg = self.cfg["eval"]
        native = self.model(images)
        native, _ = _main_and_aux(native)
        self._update_ar(native, target)
        if self.val_terms:
            up = upsample_logits(native, target.shape[-2:], self.criterion.align_corners)
            self._update_terms(native, up, target)
        plain = list(ecfg["scales"]) == [1.0] and not ecfg["flip"] and ecfg["mode"] == "whole"
        if plain:
            logits = upsample_logits(native, target.shape[-2:], self.criterion.align_corners)
        else:
            logits = predict_logits(
                self.model,
                images,
                scales=ecfg["scales"],
                flip=ecfg["flip"],
                mode=ecfg["mode"],
                window=ecfg["window"],
                stride=ecfg["stride"],
            )
            if logits.shape[-2:] != target.shape[-2:]:
                logits = F.interpolate(
                    logits, size=target.shape[-2:], mode="bilinear", align_corners=False
                )
        pred = logits.argmax(1)
        self.val_metrics.update(pred, target)
        self.test_confusions.append(
            confusion_matrix(pred, target, self.num_classes, self.ignore_index).cpu().numpy()
        )
        self.test_boundary.append(
            boundary_counts(pred, target, self.num_classes, self.ignore_index, self.boundary_ratio)
            .cpu()
            .numpy()
        )

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_scores("test")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        row = getattr(self, "_last_train_row", None)
        if row is not None:
            checkpoint["arseg_last_train_row"] = {k: float(v) for k, v in row.items()}
        checkpoint["arseg_config"] = self.cfg
        checkpoint["arseg_classes"] = list(self.class_names)
        if self.palette is not None:
            checkpoint["arseg_palette"] = [list(rgb) for rgb in self.palette]
