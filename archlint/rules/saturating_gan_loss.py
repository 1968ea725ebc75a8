"""AL108 saturating-gan-loss: a source rule (reads the training code, never imports it)."""

from __future__ import annotations

from typing import Iterator

from ..results import Finding
from .base import Rule, SourceContext
from .sourceflow import analyse_file


class SaturatingGanLoss(Rule):
    """
    ## What it does
    Reads the training code (the syntax tree, with simple data flow inside each function; the
    file is not imported) for a generator objective that minimises `log(1 - D(G(z)))` -- the
    original minimax form -- in any of its spellings: `torch.log(1 - d)`, `(1 - d).log()`,
    `torch.log1p(-d)`, `F.logsigmoid(-logits)`, the negated discriminator loss on fakes
    (`-criterion(output, fake_label)`, `-F.binary_cross_entropy_with_logits(d_fake, zeros)`,
    `-F.softplus(d_fake)`), or a discriminator loss negated through a variable
    (`errG = -errD_fake`, `g_loss = -d_loss`). A discriminator output is the result of calling
    `D`, `netD`, `discriminator`, `critic` (also as `self.` attributes), an instance of a class
    named `*Discriminator*`/`*Critic*`, or a parameter named like `d_fake`/`fake_logits`.
    A loss is judged where it is minimised: `loss.backward()`, `return loss`, `G.minimize(loss)`
    (`maximize` flips the sign), or assigned to a generator's loss (`errG`, `g_loss`,
    `loss_G`). Discriminator updates are not reported: a discriminator output of
    `D(fake.detach())`, the loss with the minus sign, and the whole minimax value
    `log D(x) + log(1 - D(G(z)))` unless the names say it is the generator's (`g_loss = -d_loss`,
    a function `optimize_G`). Epsilons and clamps inside the log are seen through. The message
    names the generator loss's line and the discriminator call's.

    ## Why is this bad?
    `d/dD log(1 - D) = -1/(1 - D)`: when the discriminator confidently rejects the fakes
    (D(G(z)) near 0), which is the rule early in training, the generator's gradient is about
    the discriminator's own small slope: the generator stops learning just when it has the most
    to learn (Goodfellow et al. 2014, section 3). Minimising `-log D(G(z))` instead has the same
    fixed point and a strong gradient when D rejects the fakes.

    ## Example
    ```python
    output = netD(fake).view(-1)
    errG = -criterion(output, fake_label)      # = log(1 - D(G(z))), minimised
    ```

    ## Use instead
    The non-saturating loss: the fakes labelled real,
    ```python
    output = netD(fake).view(-1)
    errG = criterion(output, real_label)       # = -log D(G(z))
    ```
    or `-torch.log(d).mean()`, `F.softplus(-logits).mean()`; or a WGAN-GP, hinge or
    least-squares objective.

    ## References
    - Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014, section 3.
    - Arjovsky & Bottou, "Towards Principled Methods for Training Generative Adversarial
      Networks", ICLR 2017.
    """

    code = "AL108"
    name = "saturating-gan-loss"
    severity = "warning"
    kind = "source"

    bad_example = """
import torch
import torch.nn as nn


def generator_step(netG, netD, optimizerG, noise):
    fake = netG(noise)
    d_fake = netD(fake)
    loss_G = torch.log(1 - d_fake).mean()
    optimizerG.zero_grad()
    loss_G.backward()
    optimizerG.step()
"""
    good_example = """
import torch
import torch.nn as nn


def generator_step(netG, netD, optimizerG, noise):
    fake = netG(noise)
    d_fake = netD(fake)
    loss_G = -torch.log(d_fake).mean()
    optimizerG.zero_grad()
    loss_G.backward()
    optimizerG.step()


def discriminator_step(netG, netD, optimizerD, real, noise):
    fake = netG(noise)
    loss_D = -(torch.log(netD(real)) + torch.log(1 - netD(fake.detach()))).mean()
    loss_D.backward()
"""

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        flow = analyse_file(ctx.tree, ctx.models, ctx.path)
        for s in flow.saturating:
            d = s.term.d
            where = (f"the discriminator call on line {d.line} ({d.what})"
                     if not d.what.startswith("parameter") else
                     f"the discriminator output {d.what} (line {d.line})")
            yield self.source_finding(
                ctx, s.node,
                f"generator loss on line {s.line} (`{s.text}`) minimises log(1 - D(G(z))) of "
                f"{where}: its gradient vanishes when the discriminator rejects the fakes, "
                "i.e. early in training; minimise -log D(G(z)) instead (label the fakes real)",
                hint="use the non-saturating loss: criterion(netD(fake), real_label), "
                     "-torch.log(D(G(z))).mean() or F.softplus(-logits).mean()",
                data={"loss_line": s.line, "discriminator_line": d.line})
