"""Knowledge distillation from a dense teacher, as a training-loop callback.

Example:
    >>> import torch
    >>> from pellucid.models import MLP
    >>> from pellucid.training import fit
    >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    >>> teacher, student = MLP(4, 2), MLP(4, 2, hidden=(8,))
    >>> _ = fit(student, (x, y), epochs=1, callbacks=[Distillation(teacher)], progress=False)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pellucid._validation import check_float
from pellucid.training import Callback, TrainState

__all__ = ["Distillation", "distillation_loss"]


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, temperature: float = 4.0
) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: ``T**2 * KL(softmax(t / T) || softmax(s / T))``.

    Raises:
        TypeError: `temperature` is not a real number.
        ValueError: `temperature` is not > 0.

    Example:
        >>> z = torch.randn(3, 5)
        >>> float(distillation_loss(z, z))
        0.0
    """
    t = check_float("temperature", temperature, min_value=0.0, min_inclusive=False)
    log_p = F.log_softmax(student / t, dim=-1)
    log_q = F.log_softmax(teacher / t, dim=-1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * (t * t)


class Distillation(Callback):
    """Add ``weight * distillation_loss(student, teacher)`` to every training step.

    For regression outputs (float labels) the term is the mean squared error to the
    teacher's output. The teacher runs in eval mode without gradients; its mode is
    restored when training ends.

    Args:
        teacher: the dense model.
        temperature: softening temperature ``T`` (> 0).
        weight: multiplier of the term (the task loss keeps weight 1).

    Raises:
        TypeError: `teacher` is not an nn.Module, or a number argument is not a real number.
        ValueError: `temperature` is not > 0, or `weight` is negative.
    """

    def __init__(
        self, teacher: nn.Module, *, temperature: float = 4.0, weight: float = 1.0
    ) -> None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"`teacher` must be an nn.Module; got {type(teacher).__name__}.")
        self.teacher = teacher
        self.temperature = check_float(
            "temperature", temperature, min_value=0.0, min_inclusive=False
        )
        self.weight = check_float("weight", weight, min_value=0.0)
        self._was_training = False

    def on_train_begin(self, state: TrainState) -> None:
        self._was_training = self.teacher.training
        self.teacher.eval()

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        if self.weight == 0 or state.outputs is None or state.inputs is None:
            return None
        with torch.no_grad():
            target = self.teacher(state.inputs)
        if state.labels is not None and state.labels.is_floating_point():
            term = F.mse_loss(state.outputs, target)
        else:
            term = distillation_loss(state.outputs, target, temperature=self.temperature)
        return self.weight * term

    def on_train_end(self, state: TrainState) -> None:
        self.teacher.train(self._was_training)
