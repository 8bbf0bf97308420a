"""Mean Teacher (Tarvainen & Valpola 2017), the consistency baseline, as SSL4MIS runs it: an EMA
teacher, Gaussian input noise, MSE between student and teacher softmax on unlabelled data,
weight ramped up with a sigmoid. With a strong view configured (``unlabelled.strong``), the
teacher sees the weak view and the student the strong one."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from semiseg.methods.base import make_ema, register
from semiseg.methods.segmentation import SegmentationMethod
from semiseg.models.unet import build_unet
from semiseg.preprocess.cache import DataInfo
from semiseg.training.losses import sigmoid_rampup


def noisy(x: torch.Tensor, std: float) -> torch.Tensor:
    """x plus Gaussian noise clamped to +-2 std (SSL4MIS: std 0.1, clamp 0.2)."""
    return x + torch.clamp(torch.randn_like(x) * std, -2 * std, 2 * std)


@register
class MeanTeacher(SegmentationMethod):
    name = "mean-teacher"
    config_files = ["segmentation", "mean_teacher"]
    semi_supervised = True

    def __init__(self, config: dict[str, Any], data: DataInfo) -> None:
        super().__init__(config, data)
        self.net = build_unet(config, self.dims, self.channels, self.num_classes)
        self.teacher = make_ema(self.net, float(config["ema_decay"]))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        sup = self.supervised_loss(batch)
        if "unlabelled" not in batch:
            return sup, {"loss_sup": sup.item()}
        c = self.config["consistency"]
        unl = batch["unlabelled"]
        view = self.student_view(unl)
        box = self.cutmix_mask(view)
        student = torch.softmax(self.net(noisy(self.mix(box, view), c["noise_std"])).float(), dim=1)
        with torch.no_grad():
            teacher = torch.softmax(self.teacher(noisy(unl["image"], c["noise_std"])).float(), dim=1)
        if "gt" in unl:  # diagnostic only: the hidden annotation of the "unlabelled" patches
            dice_teacher = self.foreground_dice(teacher.argmax(1), unl["gt"])
        teacher = self.mix(box, teacher)
        total = self.ctx.total_steps if self.ctx else 1
        weight = float(c["weight"]) * sigmoid_rampup(step / max(float(c["rampup"]) * total, 1.0))
        cons = F.mse_loss(student, teacher)
        logs = {"loss_sup": sup.item(), "loss_cons": cons.item(), "w_cons": weight}
        if "gt" in unl:
            logs["dice_teacher"] = dice_teacher
        return sup + weight * cons, logs

    def after_optimizer_step(self, step: int) -> None:
        self.teacher.update_parameters(self.net)

