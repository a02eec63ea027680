"""Knowledge distillation (Hinton, Vinyals & Dean 2015) from the dense teacher."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels).

    T^2 keeps the soft term's gradient scale independent of T (Hinton et al., section 2).
    """
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * t * t * soft + (1 - alpha) * hard


def kd_loss_fn(teacher: nn.Module, temperature: float, alpha: float):
    """A loss for pipeline.train.fit: the frozen teacher (eval mode) labels each batch."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(student_logits, labels, x):
        with torch.no_grad():
            # fit moves batches to the training device (a GPU under nccl): the teacher follows
            teacher_logits = teacher.to(x.device)(x)
        return kd_loss(student_logits, teacher_logits, labels, temperature, alpha)

    return loss
