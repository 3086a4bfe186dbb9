"""What a denoiser is conditioned on besides the noise level: a class label, a prompt, or both.

A network's `c` is either a bare label tensor (B,) (the class-only form every class-conditional checkpoint uses)
or a `Condition`, which carries the labels and the prompt side by side. The prompt comes in one of two forms:

- `tokens` (B, L) for a network that encodes its own prompts (the trainable byte encoder, `model.text`), or
- `context` (B, L, D), a prompt already encoded by a frozen encoder (CLIP or T5), the keys and values of the
  network's cross-attention (Rombach et al. 2022, Sec. 3.3),

with `mask` (B, L) True at real tokens. Classifier-free guidance concatenates a condition with its unconditional
counterpart (`cat`), whatever it holds; the unconditional one has the null class and the empty (or negative) prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence, Union

import torch
from torch import Tensor


@dataclass(frozen=True)
class Condition:
    """Labels and/or a prompt for a batch of B samples; every field is None or has B rows."""

    labels: Optional[Tensor] = None  # (B,) int64 in [0, K], K = the null class
    tokens: Optional[Tensor] = None  # (B, L) int64 token ids (a network with its own text encoder encodes them)
    context: Optional[Tensor] = None  # (B, L, D) float, an encoded prompt
    mask: Optional[Tensor] = None  # (B, L) bool, True at real tokens (the keys cross-attention may attend to)

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __len__(self) -> int:
        return len(next(iter(self.tensors().values())))

    def to(self, device) -> "Condition":
        return replace(self, **{k: v.to(device) for k, v in self.tensors().items()})

    def __getitem__(self, rows) -> "Condition":
        return replace(self, **{k: v[rows] for k, v in self.tensors().items()})


AnyCondition = Union[Tensor, Condition, None]


def labels_of(c: AnyCondition) -> Optional[Tensor]:
    """The class labels of a condition (a bare tensor is labels)."""
    return c.labels if isinstance(c, Condition) else c


def cat(a: AnyCondition, b: AnyCondition) -> AnyCondition:
    """[a; b] along the batch, field by field; both must hold the same fields (and prompts of one length)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.cat([a, b])
    if not (isinstance(a, Condition) and isinstance(b, Condition)) or a.tensors().keys() != b.tensors().keys():
        raise ValueError("the conditional and unconditional inputs of guidance must be conditions of the same kind")
    return replace(a, **{k: torch.cat([v, getattr(b, k)]) for k, v in a.tensors().items()})


def repeat(c: Condition, n: int) -> Condition:
    """A condition of one row repeated to n rows."""
    return replace(c, **{k: v.expand(n, *v.shape[1:]) for k, v in c.tensors().items()})


def class_condition(y: Tensor, num_classes: int, p_uncond: float = 0.0) -> Optional[Tensor]:
    """Class labels for a network: unlabelled (-1) and, with probability p_uncond, dropped labels become the null
    class (index num_classes, Ho & Salimans 2022); None for an unconditional network."""
    if num_classes == 0:
        return None
    c = torch.where(y < 0, torch.full_like(y, num_classes), y)
    if p_uncond > 0:
        drop = torch.rand(y.shape, device=y.device) < p_uncond
        c = torch.where(drop, torch.full_like(c, num_classes), c)
    return c


class Conditioner:
    """Data labels (-1 = unlabelled) and prompts → a network's condition, and the unconditional one for guidance.

    Without a prompt encoder it gives bare labels exactly as before (`class_condition`); with one, a `Condition`
    with the labels (when the model has classes) and the prompt fields of `prompt_encoder.condition`. Dropping for
    classifier-free guidance drops both together: the null class and the empty prompt.
    """

    def __init__(self, num_classes: int, prompt_encoder=None) -> None:
        self.num_classes = num_classes
        self.prompt_encoder = prompt_encoder

    @property
    def prompted(self) -> bool:
        return self.prompt_encoder is not None

    @property
    def conditional(self) -> bool:
        return self.prompted or self.num_classes > 0

    def __call__(self, labels: Optional[Tensor], prompts: Optional[Sequence[str]], n: int, p_uncond: float = 0.0,
                 device=None) -> AnyCondition:
        """The condition of n samples; labels None = the null class, prompts None = the empty prompt."""
        if not self.prompted:
            return None if labels is None else class_condition(labels.to(device), self.num_classes, p_uncond)
        prompts = [""] * n if prompts is None else list(prompts)
        if len(prompts) != n or (labels is not None and len(labels) != n):
            raise ValueError(f"a condition of {n} samples needs {n} prompts and labels, got {len(prompts)} prompts")
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.long)
        labels = class_condition(labels.to(device), self.num_classes)
        if p_uncond > 0:
            drop = (torch.rand(n, device=device) < p_uncond).tolist()
            prompts = ["" if dropped else p for p, dropped in zip(prompts, drop)]
            if labels is not None:
                labels = torch.where(torch.tensor(drop, device=labels.device), self.num_classes, labels)
        return Condition(labels=labels, **self.prompt_encoder.condition(prompts, device))

    def unconditional(self, n: int, negative_prompts: Optional[Sequence[str]] = None, device=None) -> AnyCondition:
        """The unconditional branch of guidance for n samples: the null class, and the empty prompt or the negative
        prompts (one, or one per sample). None for a model without prompts (the branch is built from the labels)."""
        if not self.prompted:
            if negative_prompts:
                raise ValueError("a negative prompt needs a model trained on prompts")
            return None
        negative = list(negative_prompts or [""])
        negative = negative * n if len(negative) == 1 else negative
        labels = torch.full((n,), -1, dtype=torch.long)
        return self(labels, negative, n, device=device)
