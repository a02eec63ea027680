"""Knowledge distillation (Hinton, Vinyals & Dean 2015) from the dense teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ground.errors import UsageError


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels).

    T^2 keeps the soft term's gradient scale independent of T (Hinton et al., section 2).
    """
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * t * t * soft + (1 - alpha) * hard


def kd_loss_fn(teacher: nn.Module, temperature: float, alpha: float):
    """A loss for pipeline.train.fit: the teacher (eval mode, under no_grad) labels each batch.
    Its parameters' requires_grad is left as it is: torch-pruning skips frozen layers, and the
    same module may be pruned later."""
    teacher.eval()

    def loss(student_logits, labels, x):
        with torch.no_grad():
            # fit moves batches to the training device (a GPU under nccl): the teacher follows
            teacher_logits = teacher.to(x.device)(x)
        return kd_loss(student_logits, teacher_logits, labels, temperature, alpha)

    return loss


# ---------------------------------------------------------------------------------------------
# feature distillation: hints at intermediate layers through 1x1 adapters (Romero et al. 2015,
# FitNets), for students whose widths differ from the teacher's after pruning


def last_conv(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise UsageError(
            "recipe key distill.feature_layers: the student has no Conv2d layer; "
            "name the layers to match as 'student_layer:teacher_layer'"
        )
    return names[-1]


def feature_pairs(student: nn.Module, teacher: nn.Module, specs: tuple[str, ...]) -> list:
    """[(student layer, teacher layer)] from 'student[:teacher]' specs (empty: the last conv;
    a pruned student keeps the teacher's layer names, so one name serves both)."""
    specs = specs or (last_conv(student),)
    s_names, t_names = dict(student.named_modules()), dict(teacher.named_modules())
    pairs = []
    for spec in specs:
        s, _, t = spec.partition(":")
        t = t or s
        for name, where in ((s, s_names), (t, t_names)):
            if name not in where:
                who = "student" if where is s_names else "teacher"
                raise UsageError(
                    f"recipe key distill.feature_layers: no module {name!r} in the "
                    f"{who}; e.g. {', '.join(list(where)[1:5])}"
                )
        pairs.append((s, t))
    return pairs


class FeatureHints(nn.Module):
    """Captures the paired layers' outputs with forward hooks and computes
    sum over pairs of MSE(adapter(student feature), teacher feature). The adapters (1x1 conv for
    (N, C, H, W) features, linear otherwise) are trained with the student and discarded."""

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: list, example: torch.Tensor):
        super().__init__()
        self.pairs, self._s, self._t, self._hooks = pairs, {}, {}, []
        s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
        for i, (s, t) in enumerate(pairs):
            self._hooks.append(s_mods[s].register_forward_hook(self._keep(self._s, i)))
            self._hooks.append(t_mods[t].register_forward_hook(self._keep(self._t, i)))
        was = student.training
        with torch.no_grad():
            student.eval()(example)
            teacher.eval()(example)
        student.train(was)
        self.adapters = nn.ModuleList()
        for i in range(len(pairs)):
            fs, ft = self._s[i], self._t[i]
            self.adapters.append(
                nn.Conv2d(fs.shape[1], ft.shape[1], 1)
                if fs.dim() == 4
                else nn.Linear(fs.shape[-1], ft.shape[-1])
            )

    @staticmethod
    def _keep(store, i):
        def hook(_module, _inputs, output):
            store[i] = output[0] if isinstance(output, tuple) else output

        return hook

    def loss(self) -> torch.Tensor:
        total = torch.zeros(())
        for i, adapter in enumerate(self.adapters):
            fs, ft = adapter(self._s[i]), self._t[i].detach()
            if fs.dim() == 4 and fs.shape[-2:] != ft.shape[-2:]:  # another architecture
                fs = F.adaptive_avg_pool2d(fs, ft.shape[-2:])
            total = total + F.mse_loss(fs, ft)
        return total

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def kd_feature_loss_fn(
    teacher: nn.Module, hints: FeatureHints, temperature: float, alpha: float, weight: float
):
    """Hinton's loss plus `weight` * the feature hints (the teacher's forward fills them)."""
    base = kd_loss_fn(teacher, temperature, alpha)

    def loss(student_logits, labels, x):
        return base(student_logits, labels, x) + weight * hints.loss()

    return loss
