"""Adversarial training on the word embeddings: FGM (Miyato et al. 2017) and PGD (Madry et al. 2018).

Everything happens inside ``training_step`` under Lightning's automatic optimization, so gradient
accumulation, clipping and mixed precision work unchanged: a forward hook on the model's input embedding
layer captures its output ``e`` (batch, seq, hidden) during the clean forward; the gradient of the clean loss
with respect to ``e`` (``torch.autograd.grad``, parameters' gradients untouched) gives the direction; a second
forward adds the perturbation ``r`` to ``e``. The step returns ``clean + loss_weight * adversarial`` (the
sum, as in Miyato et al.'s L + L_adv and the usual FGM/PGD fine-tuning recipes, whose two backward passes
accumulate gradients); Lightning runs one backward through both.

FGM: r = epsilon * g / ||g||. PGD: ``steps`` ascent steps r <- Proj_eps(r + alpha * g / ||g||), each g the
gradient at the current r; FGM is PGD with one step of size epsilon. Norms are per example over its whole
(seq, hidden) embedding block, so one example's perturbation does not depend on the rest of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


def unit_direction(grad: torch.Tensor) -> torch.Tensor:
    """``grad`` (batch, seq, hidden) scaled to L2 norm 1 per example (zero where the gradient is zero)."""
    norms = grad.float().flatten(1).norm(dim=1).clamp_min(1e-12)  # (batch,)
    return (grad.float() / norms.view(-1, *([1] * (grad.dim() - 1)))).to(grad.dtype)


def project(r: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``r`` (batch, seq, hidden) with each example's L2 norm clipped to ``epsilon``."""
    norms = r.float().flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = (epsilon / norms).clamp(max=1.0).view(-1, *([1] * (r.dim() - 1)))
    return (r.float() * scale).to(r.dtype)


@contextmanager
def embedding_hook(model: torch.nn.Module, perturbation: torch.Tensor | None = None) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward of ``model`` records its input-embedding output in the yielded list,
    with ``perturbation`` (broadcast to its shape) added when given."""
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if perturbation is not None:
            output = output + perturbation.to(output.dtype)
        elif not output.requires_grad and torch.is_grad_enabled():
            output = output.detach().requires_grad_(True)  # frozen embeddings: still a gradient to follow
        captured.append(output)
        return output

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@dataclass
class Adversarial:
    """The configured perturbation (``adversarial`` config group, method fgm or pgd)."""

    method: str
    epsilon: float
    alpha: float
    steps: int
    loss_weight: float

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> Adversarial | None:
        """None when the group is absent (older checkpoints) or ``method`` is null."""
        if not cfg or cfg.get("method") is None:
            return None
        alpha = cfg["alpha"] if cfg.get("alpha") is not None else cfg["epsilon"]
        return cls(cfg["method"], float(cfg["epsilon"]), float(alpha), int(cfg["steps"]), float(cfg["loss_weight"]))

    def perturbation(self, grad: torch.Tensor, loss_at: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The final r (batch, seq, hidden), detached. ``grad``: d clean loss / d embeddings; ``loss_at(r)``:
        the loss of a forward with embeddings + r (used for PGD's later steps)."""
        r = project(self.alpha * unit_direction(grad.detach()), self.epsilon)
        for _ in range(self.steps - 1):
            r = r.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss_at(r), r)  # gradients w.r.t. r only: no parameter .grad is touched
            r = project(r.detach() + self.alpha * unit_direction(g), self.epsilon)
        return r.detach()

    def losses(self, model: torch.nn.Module, forward: Callable[[], Any]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """(clean model output, clean loss, adversarial loss). ``forward()`` runs ``model`` on the batch and
        returns its output (with ``.loss``)."""
        with embedding_hook(model) as embeds:
            out = forward()
        clean = out.loss
        # retain_graph: Lightning still backpropagates the clean loss through this graph afterwards.
        (grad,) = torch.autograd.grad(clean, embeds[0], retain_graph=True)

        def loss_at(r: torch.Tensor) -> torch.Tensor:
            with embedding_hook(model, r):
                return forward().loss

        r = self.perturbation(grad, loss_at)
        return out, clean, loss_at(r)

    def training_loss(self, module: Any, forward: Callable[[], Any], rows: int) -> tuple[Any, torch.Tensor]:
        """(clean output, clean + loss_weight * adversarial loss) for a task's training_step; logs
        ``train/loss_clean`` and ``train/loss_adv``."""
        out, clean, adv = self.losses(module.model, forward)
        module.log_train_step({"train/loss_clean": clean, "train/loss_adv": adv}, batch_size=rows)
        return out, clean + self.loss_weight * adv
