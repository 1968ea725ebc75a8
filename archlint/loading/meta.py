"""Building a model on the meta device, its initialisation recorded (``--device meta``).

The model's constructor runs under ``torch.device("meta")``: no weight is allocated. A
``TorchDispatchMode`` (:class:`InitRecorder`) records every operation on meta tensors while it
runs -- the default ``reset_parameters`` of each layer, ``nn.init.*``, ``Tensor.normal_`` /
``uniform_`` / ``fill_`` / ``zero_`` / ``copy_``, a model's own ``_init_weights`` through
``self.apply`` -- each as the function, its arguments (tensors as views of storages) and the
storages it reads and writes. ``nn.init`` functions that skip meta tensors (``trunc_normal_``,
``orthogonal_``, ``dirac_``, ``sparse_``) are recorded as one call each.

After tracing (on meta inputs), :meth:`MetaBuild.materialise_small` makes every small tensor
(parameters and buffers up to :data:`SMALL` entries: norm scales, biases, position tables) real
by replaying, in the order they ran, the recorded operations its storage depends on, with the
random streams seeded as for a real build: a model whose tensors are all small gets exactly the
weights a real build gives. A large weight stays on the meta device; the distribution its
entries were drawn from is read off its recorded operations (:meth:`MetaBuild.dist`) and the
analysis takes its statistics from it (:mod:`archlint.graph.metainit`). A large tensor whose
initialisation is not a known distribution (a partial write, an operation that reads data) is
made real on demand, alone (:meth:`MetaBuild.materialise`), and said so in a note.

Reading a meta tensor's value while the model is built (``.item()``, ``.tolist()``, ``.cpu()``:
drop-path rates from ``torch.linspace``) replays that tensor's operations for real.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import DeviceContext, _device_constructors
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from ..graph.metainit import Dist, set_dist, set_materialiser
from .build import LoadError
from .init_dist import _EMPTY, Ref, _Call, dist_of_storage

#: Weight matrices up to this many entries are made real after tracing (16 MB in float32).
SMALL = 1 << 22

_aten = torch.ops.aten
_META = torch.device("meta")
_CPU = torch.device("cpu")


class MetaError(RuntimeError):
    """The model cannot be analysed on the meta device (the message says why)."""


@dataclass
class _Op:
    func: Any  # an aten overload, or a Python function for a recorded call
    args: Any
    kwargs: Any
    reads: frozenset
    writes: frozenset
    outs: Any = None


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _is_meta(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "meta"


class _Mode(TorchDispatchMode):
    """A dispatch mode torch does not wrap for dynamo: the wrapper imports torch._dynamo (2-3
    s) on its first call, inside the first model's time limit. archlint never compiles."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False


class InitRecorder(_Mode):
    """Records every operation touching a meta tensor (see the module's docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[_Op] = []
        self.keep: list[torch.Tensor] = []  # storages stay alive: their keys stay unique
        self.nelem: dict[int, tuple[int, torch.dtype]] = {}
        self.real: dict[int, torch.Tensor] = {}
        self.silent = 0

    def ref(self, t: torch.Tensor) -> Ref:
        key = _key(t)
        if key not in self.nelem:
            self.keep.append(t)
            self.nelem[key] = (t.untyped_storage().nbytes() // max(t.element_size(), 1), t.dtype)
        return Ref(key, tuple(t.size()), tuple(t.stride()), t.storage_offset(), t.dtype)

    def encode(self, value: Any) -> Any:
        def one(x: Any) -> Any:
            if _is_meta(x):
                return self.ref(x)
            if isinstance(x, torch.Tensor):
                return x.detach().clone()  # a real literal (a CPU constant copied in)
            return x
        return tree_map(one, value)

    def record(self, func: Any, args: tuple, kwargs: dict, out: Any,
               writes: Optional[list] = None) -> None:
        eargs, ekwargs = self.encode(args), self.encode(kwargs)
        reads = {r.key for r in tree_flatten((eargs, ekwargs))[0] if isinstance(r, Ref)}
        eouts = self.encode(out)
        written = {r.key for r in tree_flatten(eouts)[0] if isinstance(r, Ref)} - reads
        for x in writes or []:
            if _is_meta(x):
                written.add(self.ref(x).key)
        self.ops.append(_Op(func, eargs, ekwargs, frozenset(reads), frozenset(written), eouts))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = tree_flatten((args, kwargs))[0]
        if self.silent or not any(_is_meta(x) for x in flat) and \
                kwargs.get("device") != _META:
            return func(*args, **kwargs)
        if func is _aten._local_scalar_dense.default or (
                func is _aten._to_copy.default and kwargs.get("device", _META) != _META) or (
                func is _aten.copy_.default and not _is_meta(args[0])):
            # a value read while building (.item(), .tolist(), .cpu()): replay it for real
            return func(*self.realise(args), **self.realise(kwargs))
        out = func(*args, **kwargs)
        writes = []
        schema = getattr(func, "_schema", None)
        if schema is not None:
            for i, a in enumerate(schema.arguments):
                if a.alias_info is not None and a.alias_info.is_write:
                    value = args[i] if i < len(args) else kwargs.get(a.name)
                    writes.extend(x for x in tree_flatten(value)[0] if _is_meta(x))
        self.record(func, args, kwargs, out, writes)
        return out

    # ------------------------------------------------------------------ replay
    def realise(self, value: Any) -> Any:
        """``value`` with its meta tensors replaced by real ones (their operations replayed,
        without disturbing the random streams)."""
        keys = {_key(x) for x in tree_flatten(value)[0] if _is_meta(x)}
        with torch.random.fork_rng(devices=[]):
            real = self.replay(keys, keep=False)
        return tree_map(lambda x: _view(real, self.ref(x)) if _is_meta(x) else x, value)

    def replay(self, keys: set[int], keep: bool = True) -> dict[int, torch.Tensor]:
        """Run, in their order, the recorded operations the storages ``keys`` depend on; the
        storages as flat real tensors (kept for later replays when ``keep``)."""
        needed = {k for k in keys if k not in self.real}
        chosen = []
        for i in range(len(self.ops) - 1, -1, -1):
            op = self.ops[i]
            if op.writes & needed or (_RNG in op.writes and needed):
                chosen.append(op)
                needed |= op.reads
        real: dict[int, torch.Tensor] = dict(self.real)
        self.silent += 1
        try:
            for op in reversed(chosen):
                args = _decode(op.args, real)
                kwargs = _decode(op.kwargs, real)
                out = op.func(*args, **kwargs)
                for ref, value in zip(tree_flatten(op.outs)[0], tree_flatten(out)[0]):
                    if isinstance(ref, Ref) and ref.key not in real and \
                            isinstance(value, torch.Tensor):
                        n, dtype = self.nelem[ref.key]
                        real[ref.key] = value.new_empty(0).set_(
                            value.untyped_storage(), 0, (n,), (1,))
        finally:
            self.silent -= 1
        if keep:
            self.real.update({k: v for k, v in real.items() if k in keys})
        missing = [k for k in keys if k not in real]
        if missing:
            raise RuntimeError("the initialisation of a meta tensor was not recorded")
        return real


def _decode(value: Any, real: dict[int, torch.Tensor]) -> Any:
    def one(x: Any) -> Any:
        if isinstance(x, Ref):
            if x.key not in real:
                raise RuntimeError("a tensor made before the model was built is read")
            return _view(real, x)
        if isinstance(x, torch.device) and x.type == "meta":
            return _CPU
        if isinstance(x, torch.Tensor):
            return x.clone()
        return x
    return tree_map(one, value)


def _view(real: dict[int, torch.Tensor], ref: Ref) -> torch.Tensor:
    base = real[ref.key]
    if base.dtype != ref.dtype:
        base = base.view(ref.dtype)
    return base.as_strided(ref.size, ref.stride, ref.offset)


class _Shadows(_Mode):
    """Real values beside meta ones, for the small values of a meta forward pass."""

    #: Values up to this many entries get a real shadow.
    LIMIT = 1 << 20

    def __init__(self) -> None:
        super().__init__()
        self.real: dict[int, tuple[Any, torch.Tensor]] = {}

    def put(self, meta: torch.Tensor, real: torch.Tensor) -> None:
        # a strong reference (a weak one would keep parameters from being swapped for real
        # ones); meta tensors cost nothing to keep
        self.real[id(meta)] = (meta, real)

    def get(self, meta: torch.Tensor) -> Optional[torch.Tensor]:
        hit = self.real.get(id(meta))
        return hit[1] if hit is not None and hit[0] is meta else None

    def _swap(self, value: Any) -> Any:
        def one(x: Any) -> Any:
            if _is_meta(x):
                r = self.get(x)
                if r is None:
                    raise LookupError
                return r
            if isinstance(x, torch.device) and x.type == "meta":
                return _CPU
            return x
        return tree_map(one, value)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reads_value = func is _aten._local_scalar_dense.default or (
            func is _aten._to_copy.default and kwargs.get("device", _META) != _META)
        if reads_value:
            try:
                return func(*self._swap(args), **self._swap(kwargs))
            except LookupError:
                return func(*args, **kwargs)  # no real value: meta's own error
        out = func(*args, **kwargs)
        flat_out = [o for o in tree_flatten(out)[0] if _is_meta(o)]
        if not flat_out or any(o.numel() > self.LIMIT for o in flat_out):
            return out
        try:
            real_args, real_kwargs = self._swap(args), self._swap(kwargs)
            if "device" in kwargs and kwargs["device"] == _META:
                real_kwargs["device"] = _CPU
            real_out = func(*real_args, **real_kwargs)
        except Exception:  # a value without a shadow, or an op that fails for real
            return out
        for m, r in zip(tree_flatten(out)[0], tree_flatten(real_out)[0]):
            if _is_meta(m) and isinstance(r, torch.Tensor) and self.get(m) is None:
                self.put(m, r)
        return out


# ------------------------------------------------------------------ nn.init calls that skip meta

def _recorded_call(recorder: InitRecorder, name: str, original: Callable) -> Callable:
    def call(tensor, *args, **kwargs):
        if not _is_meta(tensor):
            return original(tensor, *args, **kwargs)
        recorder.record(_Call(name, original), (tensor, *args), kwargs, None, writes=[tensor])
        return tensor
    call.__wrapped__ = original  # type: ignore[attr-defined]
    return call


_SKIPPING = ("_no_grad_trunc_normal_", "orthogonal_", "dirac_", "sparse_")


#: The random stream, as a storage key: seeding it is replayed before the draws after it.
_RNG = -1


def _recorded_seed(recorder: InitRecorder, original: Callable) -> Callable:
    def manual_seed(seed):
        recorder.ops.append(_Op(_Call("manual_seed", original), (seed,), {}, frozenset(),
                                frozenset({_RNG})))
        return original(seed)
    return manual_seed


@contextlib.contextmanager
def _init_patched(recorder: InitRecorder) -> Iterator[None]:
    init = nn.init
    saved = [(init, name, getattr(init, name)) for name in _SKIPPING if hasattr(init, name)]
    patched = [(obj, name, _recorded_call(recorder, name, fn)) for obj, name, fn in saved]
    for module in (torch, torch.random):  # a constructor that seeds its own draws
        saved.append((module, "manual_seed", module.manual_seed))
        patched.append((module, "manual_seed", _recorded_seed(recorder, module.manual_seed)))
    # ``from torch.nn.init import orthogonal_`` in the user's modules: the same function, bound
    # under its name there
    originals = {id(fn): (name, fn) for obj, name, fn in saved if obj is init}
    for module in list(sys.modules.values()):
        package = str(getattr(module, "__name__", "")).split(".")[0]
        if module is None or module is init or package in ("torch", "archlint"):
            continue
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        for attr, value in items:
            hit = originals.get(id(value))
            if hit is not None and value is hit[1]:
                saved.append((module, attr, value))
                patched.append((module, attr, _recorded_call(recorder, hit[0], value)))
    try:
        for obj, name, fn in patched:
            setattr(obj, name, fn)
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


# ------------------------------------------------------------------ the build

@dataclass
class MetaBuild:
    """A model built on the meta device and what its initialisation did."""

    model: nn.Module
    recorder: InitRecorder
    parameters: int
    notes: list[str] = field(default_factory=list)
    #: Large tensors made real because their initialisation was not a known distribution.
    materialised: list[str] = field(default_factory=list)
    _names: dict[int, str] = field(default_factory=dict)
    _shadows: Any = None
    _graph: Any = None

    def tensors(self) -> Iterator[tuple[str, torch.Tensor, bool]]:
        seen: set[int] = set()
        for name, p in self.model.named_parameters(remove_duplicate=False):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p, True
        for name, b in self.model.named_buffers(remove_duplicate=False):
            if b is not None and id(b) not in seen:
                seen.add(id(b))
                yield name, b, False

    def prepare(self, seed: Callable[[], None]) -> None:
        """Compute every small tensor's real value (its recorded operations replayed in order,
        the random streams seeded as for a real build). Call before tracing."""
        small = [t for _, t, _ in self.tensors() if _is_meta(t) and not _large(t)]
        seed()
        try:
            self.recorder.replay({_key(t) for t in small})
        except Exception as exc:
            raise MetaError(f"cannot replay the recorded initialisation: {exc}") from None

    @contextlib.contextmanager
    def shadowing(self, meta_inputs: Any, real_inputs: Any) -> Iterator[None]:
        """While the model runs on meta inputs: every small value computed from the inputs and
        the small tensors is also computed for real, so that code reading a value (``.item()``,
        ``if mask.all():``) gets it."""
        mode = _Shadows()
        for _, t, _ in self.tensors():
            if _is_meta(t) and _key(t) in self.recorder.real:
                mode.put(t, _view(self.recorder.real, self.recorder.ref(t)))
        for m, r in zip(tree_flatten(meta_inputs)[0], tree_flatten(real_inputs)[0]):
            if _is_meta(m) and isinstance(r, torch.Tensor):
                mode.put(m, r)
        self._shadows = mode
        # tensors the forward makes without a device (torch.rand(shape) for a drop path) go to
        # the meta device too, as everything else
        with _MetaDevice(_META), mode:
            yield

    def realise_graph(self, graph: Any) -> None:
        """In the traced graph's recorded calls, each meta value becomes its real shadow (when
        it has one) and the meta device the CPU: what recomputes a weight or a table from
        parameters (rotary tables, masks) computes it for real."""
        mode = self._shadows

        def fix(value: Any, depth: int = 0) -> Any:
            if depth > 8:
                return value
            if isinstance(value, torch.Tensor):
                if _is_meta(value) and mode is not None:
                    real = mode.get(value)
                    return real if real is not None else value
                return value
            if isinstance(value, torch.device):
                return _CPU if value.type == "meta" else value
            if isinstance(value, list):
                return [fix(v, depth + 1) for v in value]
            if isinstance(value, tuple) and not hasattr(value, "_fields"):
                return tuple(fix(v, depth + 1) for v in value)
            if isinstance(value, dict):
                return {k: fix(v, depth + 1) for k, v in value.items()}
            return value

        for node in graph.nodes:
            for k, v in list(node.attrs.items()):
                if isinstance(v, (torch.Tensor, torch.device, list, tuple, dict)):
                    node.attrs[k] = fix(v)
        if mode is not None:
            mode.real.clear()  # meta views of the parameters: they would keep them from swapping
        self._shadows = None

    def materialise_small(self, graph: Any = None) -> None:
        """Make every small tensor real (exactly as a real build); give every large one its
        distribution, or make it real when it has none. Call after tracing (``graph``: the
        traced graph, whose parameter nodes follow a tensor that had to be replaced)."""
        empty = self.uninitialised()
        if empty:
            shown = ", ".join(empty[:4]) + (f", ... {len(empty) - 4} more" if len(empty) > 4
                                            else "")
            self.notes.append(f"meta device: {len(empty)} tensor{'s' if len(empty) != 1 else ''}"
                              f" never initialised while building ({shown}): an init that "
                              "skips meta tensors, or one left to a checkpoint; their statistics "
                              "are not a real build's (--device cpu builds it for real)")
        tensors = [(n, t, p) for n, t, p in self.tensors() if _is_meta(t)]
        small = [(n, t, p) for n, t, p in tensors if not _large(t)]
        large = [(n, t, p) for n, t, p in tensors if _large(t)]
        try:
            real = self.recorder.replay({_key(t) for _, t, _ in small})
        except Exception as exc:
            raise MetaError(f"cannot replay the recorded initialisation: {exc}") from None
        for _, t, is_param in small:
            self._swap(t, _view(real, self.recorder.ref(t)), is_param, graph)
        self._graph = graph
        for name, t, _ in large:
            self._names[id(t)] = name
            set_dist(t, self.dist(t))  # None: made real when its values are read
        set_materialiser(self.materialise)

    def materialise(self, t: torch.Tensor) -> bool:
        """Make one large meta tensor real (its recorded operations replayed alone)."""
        if not _is_meta(t):
            return True
        ref = self.recorder.ref(t)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ref.key % (2 ** 31))
            real = self.recorder.replay({ref.key}, keep=False)
        self._swap(t, _view(real, ref), isinstance(t, nn.Parameter), self._graph)
        self.materialised.append(self._names.get(id(t), f"a tensor of shape {list(t.shape)}"))
        return True

    def dist(self, t: torch.Tensor) -> Optional[Dist]:
        """The distribution of ``t``'s entries from its recorded operations, None when they are
        not a sequence of whole-tensor draws, fills, copies and scalings."""
        return dist_of_storage(self.recorder, self.recorder.ref(t).key)

    def _swap(self, t: torch.Tensor, value: torch.Tensor, is_param: bool, graph: Any) -> None:
        new = nn.Parameter(value, requires_grad=t.requires_grad) if is_param else value
        try:
            torch.utils.swap_tensors(t, new)
        except RuntimeError:  # weak references to it (recurrent layers): replaced instead
            _replace(self.model, t, new, graph)

    def uninitialised(self) -> list[str]:
        """Tensors that were made (``torch.empty``) and never written while building: an
        initialisation that skipped the meta device, or a constructor that leaves them to a
        checkpoint. Their replayed values are whatever memory held."""
        out = []
        for name, t, _ in self.tensors():
            if not _is_meta(t):
                continue
            key = _key(t)
            ops = [op for op in self.recorder.ops if key in op.writes]
            if ops and all(getattr(op.func, "overloadpacket", None) is not None and
                           op.func.overloadpacket.__name__ in _EMPTY for op in ops):
                out.append(name)
        return out

    def describe(self) -> list[str]:
        if not self.materialised:
            return []
        n = len(self.materialised)
        shown = ", ".join(self.materialised[:4]) + (f", ... {n - 4} more" if n > 4 else "")
        return [f"meta device: {n} large tensor{'s' if n != 1 else ''} made real one at a time: "
                f"their initialisation is not a plain draw whose statistics can be derived "
                f"({shown})"]


def _large(t: torch.Tensor) -> bool:
    """Left on the meta device: matrices of more than SMALL entries (vectors -- scales, biases
    -- are always made real)."""
    return t.dim() >= 2 and t.numel() > SMALL


def _replace(model: nn.Module, old: torch.Tensor, new: torch.Tensor, graph: Any) -> None:
    """Put ``new`` wherever the model holds ``old`` (a tensor that cannot be swapped in place:
    a recurrent layer keeps weak references to its weights)."""
    for mod in model.modules():
        touched = False
        for table in (mod._parameters, mod._buffers):
            for name, value in list(table.items()):
                if value is old:
                    table[name] = new
                    touched = True
        if touched and hasattr(mod, "_init_flat_weights"):
            mod._init_flat_weights()  # nn.RNN/LSTM/GRU: their list of weights
    if graph is not None:
        for node in graph.nodes:
            if node.tensor is old:
                node.tensor = new


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


class _MetaDevice(DeviceContext):
    """``torch.device("meta")`` as a context, except that an empty ``torch.tensor([])`` -- how
    libraries ask which device a model is being built on, to skip initialising weights a
    checkpoint will overwrite (transformers) -- is made on the CPU: the initialisation runs and
    is recorded."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is None:
            if func is torch.tensor and args and isinstance(args[0], (list, tuple)) and \
                    len(args[0]) == 0:
                return func(*args, **kwargs)
            # made on the CPU, then moved: the move is recorded with the values
            grad = bool(kwargs.pop("requires_grad", False))
            out = func(*args, **kwargs).to(self.device)
            return out.requires_grad_(grad) if grad else out
        return super().__torch_function__(func, types, args, kwargs)


class TooLarge(LoadError):
    """A real build asked for more parameters than ``--meta-threshold`` (``--device auto``)."""


_SIZED = {"empty", "zeros", "ones", "rand", "randn", "full"}


def _requested(func: Any, args: tuple, kwargs: dict) -> Optional[int]:
    """How many entries a factory call will allocate, read from its arguments (None: not
    known before the call)."""
    name = getattr(func, "__name__", "")
    if name.endswith("_like") and args and isinstance(args[0], torch.Tensor):
        return args[0].numel()
    if name in _SIZED:
        size = kwargs.get("size", args[0] if args else ())
        if isinstance(size, int):
            size = args if name != "full" else (size,)
        try:
            return math.prod(int(s) for s in size)
        except (TypeError, ValueError):
            return None
    return None


class _Counting(TorchFunctionMode):
    """Counts the entries a real build allocates; past ``limit`` it stops the build before the
    allocation (:class:`TooLarge`): ``--device auto`` then builds on the meta device."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.total = 0
        self.constructors = _device_constructors()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.constructors:
            return func(*args, **kwargs)
        n = _requested(func, args, kwargs)
        if n is not None:
            self._add(n)
        out = func(*args, **kwargs)
        if n is None and isinstance(out, torch.Tensor):
            self._add(out.numel())
        return out

    def _add(self, n: int) -> None:
        self.total += n
        if self.total > self.limit:
            raise TooLarge(f"more than {self.limit:,} parameters")


def build_counting(build: Callable[[], nn.Module], limit: int) -> nn.Module:
    """``build()`` for real, stopped with :class:`TooLarge` as soon as the tensors it creates
    hold more than ``limit`` entries (before allocating them)."""
    with _Counting(limit):
        return build()


def build_on_meta(build: Callable[[], nn.Module]) -> MetaBuild:
    """Run ``build`` with every tensor it creates on the meta device, recording their
    initialisation. Raises what the build raises."""
    recorder = InitRecorder()
    with _MetaDevice(_META), _init_patched(recorder), recorder:
        model = build()
    if not isinstance(model, nn.Module):
        return model  # the caller reports it
    return MetaBuild(model=model, recorder=recorder, parameters=count_parameters(model))
