"""Distillation: a teacher checkpoint's softened logits teach a smaller student.

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, data)
(Hinton et al. 2015: the T^2 keeps the soft term's gradients on the scale of the hard one).
The teacher is any litelm-edge checkpoint whose tokenizer is the data folder's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import UserError


@dataclass
class DistillConfig:
    student: str = "tiny"  # model/ preset of the student; model.* --set keys edit it
    alpha: float = 0.5  # weight of the KL term; 1 - alpha weighs cross-entropy on the data
    temperature: float = 2.0  # softens teacher and student distributions alike
    baseline: bool = True  # also train the student alone for the same steps, to measure the gain


def kd_loss(student_logits, teacher_logits, targets, alpha: float, T: float):
    """Logits (B, T, V), targets (B, T) -> scalar; alpha = 0 is exactly the LM cross-entropy."""
    V = student_logits.size(-1)
    ce = F.cross_entropy(student_logits.float().view(-1, V), targets.view(-1), ignore_index=-1)
    if alpha == 0:
        return ce
    s = F.log_softmax(student_logits.float().view(-1, V) / T, -1)
    t = F.log_softmax(teacher_logits.float().view(-1, V) / T, -1)
    kl = F.kl_div(s, t, log_target=True, reduction="batchmean")  # mean over tokens
    return alpha * T * T * kl + (1 - alpha) * ce


def loss_fn(teacher, alpha: float, T: float):
    """A train() loss_fn(model, x, y) with the frozen teacher run on the same batch."""
    teacher.eval().requires_grad_(False)

    def fn(model, x, y):
        if next(teacher.parameters()).device != x.device:  # train() moved the student to its device
            teacher.to(x.device)
        logits, _ = model(x)
        with torch.no_grad():
            t, _ = teacher(x)
        return kd_loss(logits, t, y, alpha, T)
    return fn


def check_tokenizer(teacher_tok: str, data_dir, teacher_vocab: int, student_vocab: int):
    data_tok = (Path(data_dir) / "tokenizer.json").read_text()
    if data_tok != teacher_tok:
        raise UserError(f"the teacher's tokenizer is not {data_dir}'s: distil on data made with "
                        "`litelm-edge data --tokenizer TEACHER/tokenizer.json`")
    if teacher_vocab != student_vocab:
        raise UserError(f"student vocab_size {student_vocab} != teacher's {teacher_vocab}: "
                        f"--set model.vocab_size={teacher_vocab}")
