"""Generator/discriminator pairs: which models of a file are a GAN's two networks, and the
composition D(G(z)) that the generator's gradient crosses.

A pair is found by name -- classes ``Generator``/``Discriminator`` (``*Critic`` too), instances
``netG``/``netD``, ``G``/``D``, ``generator``/``discriminator`` -- or named in the config
(``feeds:`` on the generator's target). :func:`fit_pair` runs the generator once on its example
input and the discriminator on what comes out, so that a generator whose output does not fit the
discriminator's input is said in a note, never a crash.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import torch
from torch import nn

from .inputs import InputSpec, TensorSpec, call_arguments

_G = re.compile(r"^(?P<pre>.*?)(generator|gen|netg|g)(?P<post>(_\w+)?)$", re.IGNORECASE)
_D = re.compile(r"^(?P<pre>.*?)(discriminator|critic|disc|netd|d)(?P<post>(_\w+)?)$",
                re.IGNORECASE)


def role(name: str, model: nn.Module) -> Optional[tuple[str, str]]:
    """("G" | "D", the rest of the name) when ``name`` (the attribute a model is bound to in
    its file) or its class name says it is a generator or a discriminator, else None."""
    for label in (name, type(model).__name__):
        for kind, pattern in (("D", _D), ("G", _G)):
            m = pattern.match(label)
            if m is None:
                continue
            rest = (m.group("pre") + m.group("post")).lower()
            if kind == "G" and m.group(2).lower() == "g" and not (
                    label in ("G",) or label.lower().startswith("net") or m.group("post")):
                continue  # a lone trailing "g" (``ConfigNetworkLong``) is no generator
            if kind == "D" and m.group(2).lower() == "d" and not (
                    label in ("D",) or label.lower().startswith("net") or m.group("post")):
                continue
            return kind, rest.replace("net", "").replace("model", "").strip("_")
    return None


def find_pairs(models: list[tuple[str, nn.Module]]) -> list[tuple[int, int]]:
    """(generator index, discriminator index) for each pair among ``models`` (name, model): a
    generator and a discriminator whose names agree once the role is taken out (``G_A`` and
    ``D_A``), or the only two of their kinds."""
    gs, ds = [], []
    for i, (name, model) in enumerate(models):
        r = role(name, model)
        if r is not None:
            (gs if r[0] == "G" else ds).append((i, r[1]))
    pairs = []
    used: set[int] = set()
    for gi, grest in gs:
        same = [di for di, drest in ds if drest == grest and di not in used]
        if same:
            pairs.append((gi, same[0]))
            used.add(same[0])
    if not pairs and len(gs) == 1 and len(ds) == 1:
        pairs.append((gs[0][0], ds[0][0]))
    return pairs


class ComposedGAN(nn.Module):
    """D(G(z)) as one model: the path the generator's gradient takes. A conditional pair
    (``G(noise, labels)``, ``D(img, labels)``) passes the discriminator the generator's
    arguments it also takes by name."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator

    def forward(self, z: Any) -> Any:
        return self._compose(z=z)

    def _compose(self, **given: Any) -> Any:
        out = self.generator(**given) if set(given) != {"z"} else self.generator(given["z"])
        if isinstance(out, (tuple, list)):
            out = out[0]
        shared = {k: v for k, v in given.items() if k in _parameter_names(self.discriminator)
                  and k != "z"}
        return self.discriminator(out, **shared)


def _parameter_names(model: nn.Module) -> list[str]:
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def composed(generator: nn.Module, discriminator: nn.Module) -> Optional[nn.Module]:
    """The composition, with the generator's forward arguments as its own (so that input
    inference and tracing see them by name); None when the discriminator needs an argument
    beyond the image that the generator does not take (pix2pix's D(x, y) with G(x))."""
    g_names = _parameter_names(generator)
    d_names = _parameter_names(discriminator)
    import inspect

    d_params = [p for p in inspect.signature(discriminator.forward).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    needed = [p.name for p in d_params[1:] if p.default is p.empty]
    if any(n not in g_names for n in needed):
        return None
    if len(g_names) <= 1 or not any(n in d_names[1:] for n in g_names):
        return ComposedGAN(generator, discriminator)
    if not all(n.isidentifier() for n in g_names):
        return None
    args = ", ".join(g_names)
    call = ", ".join(f"{n}={n}" for n in g_names)
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {args}):\n    return self._compose({call})\n", namespace)
    cls = type("ConditionalComposedGAN", (ComposedGAN,), {"forward": namespace["forward"]})
    return cls(generator, discriminator)


def _latent_variants(spec: InputSpec) -> list[InputSpec]:
    """The generator's example input, and for an inferred 4-d one (a transposed convolution
    read first), the DCGAN latent ``[N, nz, 1, 1]``."""
    out = [spec]
    arg = spec.tensors.get(None) if list(spec.tensors) == [None] else None
    if isinstance(arg, TensorSpec) and len(arg.shape) == 4 and tuple(arg.shape[2:]) != (1, 1) \
            and arg.origin != "config" and arg.origin != "command line":
        import copy

        latent = copy.deepcopy(spec)
        latent.tensors[None].shape = (arg.shape[0], arg.shape[1], 1, 1)  # type: ignore
        out.insert(0, latent)
    return out


def fit_pair(generator: nn.Module, discriminator: nn.Module, spec: InputSpec
             ) -> tuple[Optional[InputSpec], str]:
    """The generator's example input under which D(G(z)) runs, or (None, why it does not):
    the generator's output shape and the discriminator's complaint. Runs both models once
    (user code: call it guarded)."""
    model = composed(generator, discriminator)
    if model is None:
        return None, ("the discriminator takes an input besides the generator's output that the "
                      "generator does not take (D(G(z), ...) cannot be composed)")
    problem = ""
    for candidate in _latent_variants(spec):
        try:
            with torch.no_grad():
                args, kwargs = call_arguments(generator, candidate.bind(generator))
                if len(args) + len(kwargs) != 1 and type(model) is ComposedGAN:
                    return None, ("the generator takes more than one input and the "
                                  "discriminator none of them (D(G(z)) is composed from a "
                                  "single latent z)")
                out = generator(*args, **kwargs)
        except Exception as exc:
            problem = (f"the generator does not run on {candidate.describe()}: "
                       f"{type(exc).__name__}: {exc}")
            continue
        if isinstance(out, (tuple, list)):
            out = out[0]
        shape = list(out.shape) if isinstance(out, torch.Tensor) else None
        shared = {k: v for k, v in kwargs.items() if k in _parameter_names(discriminator)[1:]}
        try:
            with torch.no_grad():
                discriminator(out, **shared)
        except Exception as exc:
            first = str(exc).strip().split("\n")[0][:200]
            problem = (f"the generator's output {shape} does not fit the discriminator's input "
                       f"({type(exc).__name__}: {first})")
            continue
        return candidate, ""
    return None, problem
