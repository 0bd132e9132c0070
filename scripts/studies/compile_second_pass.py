"""Whether a second backward pass over a ``torch.compile`` graph gives the eager gradients here.

    .venv/bin/python scripts/studies/compile_second_pass.py

The methods that differentiate the K task losses through the shared parameters one by one take
K backward passes over one graph. With torch 2.14.1 and inductor on the CPU, one of this
project's machines raised on the second pass (torch's default donated buffers) and, with
``donated_buffer=False``, returned wrong gradients from it (the first task's right, the next
ones not); another machine (AMD EPYC) gave the eager gradients in both settings. Because the
outcome depends on the machine, those methods refuse a compiled graph everywhere
(``bayesagg.methods._jacobian.COMPILED_MODEL``); this script says what this machine does, for
each setting: raised, or whether each pass's gradients equal the eager model's.
"""

from __future__ import annotations

import torch
import torch._functorch.config
from torch import nn


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ELU(), nn.Linear(8, 8), nn.ELU())


def _two_passes(encoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The first weight's gradient of two task losses, one backward pass each."""
    torch.manual_seed(2)
    heads = [nn.Linear(8, 1), nn.Linear(8, 1)]
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    h = encoder(x)
    losses = [head(h).square().mean() for head in heads]
    params = list(encoder.parameters())
    first = torch.autograd.grad(losses[0], params, retain_graph=True)[0]
    second = torch.autograd.grad(losses[1], params)[0]
    return first, second


def main() -> None:
    print(f"torch {torch.__version__}")
    for donated in (True, False):
        # The setting is read when the backward graph compiles (at the first backward pass).
        with torch._functorch.config.patch(donated_buffer=donated):
            eager = _two_passes(_encoder())
            try:
                compiled = _two_passes(torch.compile(_encoder()))
            except Exception as err:  # what torch raises is the finding
                print(f"donated_buffer={donated}: raised {type(err).__name__}: {str(err)[:200]}")
                continue
        same = [
            bool(torch.allclose(c, e, rtol=1e-4, atol=1e-6))
            for c, e in zip(compiled, eager, strict=True)
        ]
        print(
            f"donated_buffer={donated}: first pass equals eager: {same[0]}, "
            f"second pass equals eager: {same[1]}"
        )


if __name__ == "__main__":
    main()
