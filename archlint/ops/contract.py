"""``torch.einsum`` between activations: attention written as ``einsum('bhid,bhjd->bhij', q, k)``,
bilinear pooling, permutations and reductions. (An einsum with a parameter operand is a linear
layer: :mod:`.linear`.)

The equation says everything the mean-field rule needs. For two operands ``A`` (indices ``a``)
and ``B`` (indices ``b``) into output indices ``o``, each output element sums ``K`` products,
``K`` the size of every index summed away (shared ones, and ones only one operand has); the
gradient of one element of ``A`` sums over the output indices ``A`` lacks and the indices only
``B`` sums away: ``|o - a| * |b - a - o|`` terms, each ``g * B``. That is the matmul rule
(``ij,jk->ik``: ``K = n``, gains ``P * E[B^2]`` and ``M * E[A^2]``) for any contraction. One
operand: a permutation keeps every element (gain 1), a sum over ``S`` adds ``|S|`` of them. Three
or more operands, or an index repeated within an operand (a diagonal), have no rule here and are
run alone.
"""

from __future__ import annotations

import math
import string
from typing import Optional, Sequence

from ..graph.ir import Kind, Node
from ..meanfield.signal import Sig
from .base import Gains, Propagation, unknown
from .table import family, register


def parse_equation(equation: str, shapes: Sequence[Sequence[int]]
                   ) -> Optional[tuple[list[str], str, dict[str, int]]]:
    """(operand index strings, output index string, size of every index), ellipses spelled out
    as upper-case letters; None when the equation does not fit the shapes."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        return None
    spare = [c for c in string.ascii_uppercase if c not in eq]
    ell_rank = 0
    for t, shape in zip(terms, shapes):
        if "..." in t:
            ell_rank = max(ell_rank, len(shape) - (len(t) - 3))
    if ell_rank > len(spare):
        return None
    ops: list[str] = []
    sizes: dict[str, int] = {}
    for t, shape in zip(terms, shapes):
        if "..." in t:
            k = len(shape) - (len(t) - 3)
            t = t.replace("...", "".join(spare[ell_rank - k:ell_rank]))
        if len(t) != len(shape) or not all(c.isalpha() for c in t):
            return None
        for c, n in zip(t, shape):
            if sizes.get(c, 1) != 1 and n != 1 and sizes[c] != n:
                return None
            sizes[c] = max(sizes.get(c, 1), int(n))
        ops.append(t)
    if arrow:
        out = out.replace("...", "".join(spare[:ell_rank]))
    else:  # implicit output: the indices used once, in alphabetical order (ellipsis first)
        counts = {c: sum(t.count(c) for t in ops) for c in sizes}
        out = "".join(spare[:ell_rank]) + "".join(
            sorted(c for c, k in counts.items() if k == 1 and c not in spare[:ell_rank]))
    if not all(c in sizes for c in out):
        return None
    return ops, out, sizes


def product(a: Sig, b: Sig, K: int, M: int, P: int, n: int, fa: float = 1.0,
            fb: float = 1.0) -> tuple[Sig, Gains]:
    """``out = sum over K of a * b``, each element of ``a`` used by ``P`` outputs and each of
    ``b`` by ``M`` (``fa``/``fb``: broadcasting, outputs per element beyond that).

    When ``a`` has a mean (attention probabilities, 1/K each: ``softmax(s) @ v``), the output is
    an average of ``b``'s rows: it keeps what ``b``'s positions share (``w``), all its output
    rows are alike, and a gradient shared by the ``M`` output rows reaches ``b`` summed, not
    averaged: ``(M a.q + M (M - 1) a.m^2) gs``, about ``gs`` for uniform attention against
    ``go / M`` for its incoherent part. Without a mean (``q @ k.T``) this is the plain product
    of independent entries."""
    am2 = a.m * a.m
    q = K * a.q * b.q + K * (K - 1) * am2 * max(b.w, b.m * b.m)
    sig = Sig(q, K * a.m * b.m, K * a.s * b.s + K * (K - 1) * am2 * b.s, n)
    if am2 > 0.0:
        sig.with_w(K * am2 * b.q + K * (K - 1) * am2 * b.w)
    gain_a = P * b.q * fa
    gain_b = M * a.q * fb
    if am2 <= 0.0 or M <= 1:
        return sig, Gains([(0, gain_a), (1, gain_b)])
    coherent = (M * a.q + M * (M - 1) * am2) * fb
    return sig, Gains([(0, gain_a), (1, gain_b, coherent, M * M * am2 * fb, M * am2 * fb)])


def _size(indices: set[str], sizes: dict[str, int]) -> int:
    return math.prod(sizes[c] for c in indices) if indices else 1


def estimate_einsum(prop: Propagation, node: Node) -> None:
    args = node.attrs.get("args") or ()
    equation = args[0] if args and isinstance(args[0], str) else None
    shapes = [s for s in node.input_shapes if s is not None]
    parsed = parse_equation(equation, shapes) if equation and \
        len(shapes) == len(node.inputs) else None
    if parsed is None or len(parsed[0]) > 2 or any(len(set(t)) != len(t) for t in parsed[0]):
        unknown(prop, node)
        return
    ops, out, sizes = parsed
    o = set(out)
    n = prop.numel(node)
    if len(ops) == 1:
        x = prop.s_in(node, 0)
        k = _size(set(ops[0]) - o, sizes)
        prop.out(node, Sig(k * x.q + k * (k - 1) * x.m * x.m, k * x.m,
                           k * x.s + k * (k - 1) * x.m * x.m, n), Gains([(0, 1.0)]))
        return
    a, b = set(ops[0]), set(ops[1])
    sig, gains = product(prop.s_in(node, 0), prop.s_in(node, 1), _size((a | b) - o, sizes),
                         M=_size(o - b, sizes), P=_size(o - a, sizes), n=n,
                         fa=_size(b - a - o, sizes), fb=_size(a - b - o, sizes))
    prop.out(node, sig, gains)


register(*family(Kind.MATMUL, ("einsum",), estimate=estimate_einsum))
