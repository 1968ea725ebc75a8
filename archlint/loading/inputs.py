"""Example inputs: parse specs (config / CLI), bind them to forward()'s arguments, build tensors.

The input of a target is settled here, before tracing starts: the one given (config, command
line, Python API), else :func:`archlint.loading.infer.infer_input`; the tracer receives it, or None when there is none.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn


DEFAULT_BATCH = 8
DEFAULT_SEQ_LEN = 32
DEFAULT_SPATIAL = {1: (128,), 2: (32, 32), 3: (16, 16, 16)}

_DTYPES = {
    "float32": torch.float32, "float": torch.float32, "float64": torch.float64,
    "double": torch.float64, "float16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "long": torch.int64, "int32": torch.int32,
    "int": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}


class InputError(ValueError):
    """A bad input spec; the message names the offending value."""


@dataclass
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    high: Optional[int] = None  # integer inputs: ids drawn from [low, high)
    low: int = 0
    #: Where the spec came from ("config", "command line", "inferred from body.0 (Linear)").
    origin: str = "config"

    def describe(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        extra = f", ids in [{self.low}, {self.high})" if self.high is not None else ""
        if self.origin.startswith("guessed"):
            extra += " (guessed: forward runs with it)"
        return f"{list(self.shape)} {dt}{extra}"

    def make(self, device: str = "cpu", seed: int = 0) -> torch.Tensor:
        if device == "meta":
            return torch.empty(self.shape, dtype=self.dtype, device="meta")
        g = torch.Generator().manual_seed(seed)
        if self.dtype.is_floating_point or self.dtype.is_complex:
            return torch.randn(self.shape, generator=g).to(self.dtype)
        if self.dtype == torch.bool:
            return torch.ones(self.shape, dtype=torch.bool)
        high = self.high if self.high is not None else 2
        return torch.randint(self.low, high, self.shape, generator=g, dtype=self.dtype)


@dataclass
class Value:
    """A non-tensor argument of ``forward`` (``steps: 4``), passed as it is."""

    value: Any
    origin: str = "config"

    def describe(self) -> str:
        return repr(self.value)

    def make(self, device: str = "cpu", seed: int = 0) -> Any:
        return self.value


@dataclass
class ArgList:
    """Several positional inputs in order: ``forward(self, *inputs)``'s, or the first
    arguments'."""

    items: list[Union[TensorSpec, Value]] = field(default_factory=list)
    origin: str = "config"

    def describe(self) -> str:
        return "(" + ", ".join(i.describe() for i in self.items) + ")"


@dataclass
class DictArg:
    """A mapping argument: ``forward(self, batch)`` reading ``batch["user_id"]``; a spec (or a
    value) per key."""

    items: dict[str, Union[TensorSpec, Value]] = field(default_factory=dict)
    origin: str = "config"

    def describe(self) -> str:
        return "{" + ", ".join(f"{k}: {v.describe()}" for k, v in self.items.items()) + "}"

    def make(self, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
        return {k: v.make(device=device, seed=seed + i) for i, (k, v) in
                enumerate(self.items.items())}


Arg = Union[TensorSpec, Value, ArgList, DictArg]


@dataclass
class InputSpec:
    """Example inputs for one target, by forward() argument name.

    The key None means "positionally, from the first argument on": one tensor (the usual case)
    or an :class:`ArgList`. A named entry may be a tensor, a plain :class:`Value` or, for the
    ``*args`` parameter, an :class:`ArgList`.
    """

    tensors: dict[Optional[str], Arg] = field(default_factory=dict)

    def describe(self) -> str:
        if list(self.tensors) == [None]:
            return self.tensors[None].describe()
        return ", ".join(f"{k or '*'}={v.describe()}" for k, v in self.tensors.items())

    @property
    def origin(self) -> str:
        return next(iter(self.tensors.values())).origin if self.tensors else ""

    def bind(self, model: nn.Module, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
        """Values by argument name of ``model.forward``; a ``*args`` parameter gets a tuple
        (:func:`call_arguments` turns the mapping into the call)."""
        params = all_forward_parameters(model)
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                      p.POSITIONAL_OR_KEYWORD)]
        var = next((p for p in params if p.kind == p.VAR_POSITIONAL), None)
        by_name = {p.name: p for p in params if p.kind != p.VAR_KEYWORD}
        takes_any_keyword = any(p.kind == p.VAR_KEYWORD for p in params)
        out: dict[str, Any] = {}
        counter = iter(range(seed, seed + 10_000))
        cls = type(model).__name__
        for name, arg in self.tensors.items():
            if name is None:
                items = arg.items if isinstance(arg, ArgList) else [arg]
                free = [p for p in positional if p.name not in self.tensors]
                if not free and var is None:  # forward(self, *, x): the first keyword
                    free = [p for p in params if p.kind == p.KEYWORD_ONLY
                            and p.name not in self.tensors][:1]
                for p, item in zip(free, items):
                    out[p.name] = item.make(device=device, seed=next(counter))
                rest = items[len(free):]
                if rest:
                    if var is None:
                        if not positional:
                            raise InputError(f"{cls}.forward() takes no tensor argument")
                        raise InputError(f"{len(items)} positional inputs given but {cls}."
                                         f"forward() takes {len(free)}")
                    out[var.name] = tuple(i.make(device=device, seed=next(counter))
                                          for i in rest)
                continue
            param = by_name.get(name)
            if param is None and not takes_any_keyword:
                raise InputError(f"{cls}.forward() has no argument {name!r} (it takes: "
                                 f"{_signature_text(params)})")
            if isinstance(arg, ArgList):
                if param is None or param.kind != param.VAR_POSITIONAL:
                    raise InputError(f"{name}: a list of inputs goes to a *args parameter; "
                                     f"{cls}.forward({_signature_text(params)})")
                out[name] = tuple(i.make(device=device, seed=next(counter)) for i in arg.items)
            else:
                out[name] = arg.make(device=device, seed=next(counter))
        missing = [p.name for p in params if p.default is p.empty and p.name not in out
                   and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if missing:
            raise InputError(f"{cls}.forward() needs {_names(missing)}, which the example input "
                             f"does not give; name {'them' if len(missing) > 1 else 'it'} under "
                             f"'input:' in the config ({missing[0]}: {{shape: [...]}} for a "
                             f"tensor, {missing[0]}: VALUE for anything else)")
        return out


def _names(names: list[str]) -> str:
    quoted = [repr(n) for n in names]
    return "argument " + quoted[0] if len(quoted) == 1 else \
        "arguments " + ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _signature_text(params: list[inspect.Parameter]) -> str:
    return ", ".join(str(p).split(":")[0].split("=")[0].strip() for p in params)


def call_arguments(model: nn.Module, bound: Mapping[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """``(args, kwargs)`` to call ``model`` with the values :meth:`InputSpec.bind` gave:
    positional-only arguments and ``*args`` positionally, the rest by name."""
    params = all_forward_parameters(model)
    var = next((p for p in params if p.kind == p.VAR_POSITIONAL), None)
    if var is None and not any(p.kind == p.POSITIONAL_ONLY for p in params):
        return (), dict(bound)
    args: list[Any] = []
    kwargs = dict(bound)
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and var is not None \
                or p.kind == p.POSITIONAL_ONLY:
            if p.name in kwargs:
                args.append(kwargs.pop(p.name))
            elif p.default is not p.empty:
                args.append(p.default)
            else:
                break
        elif p.kind == p.VAR_POSITIONAL:
            args.extend(kwargs.pop(p.name, ()))
            break
    return tuple(args), kwargs


def all_forward_parameters(model: nn.Module) -> list[inspect.Parameter]:
    """Every parameter of ``model.forward``, ``*args`` and ``**kwargs`` included."""
    if getattr(model, "_archlint_opaque", False):  # a wrapped TorchScript module
        model = model.__dict__["target"]
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []


def forward_parameters(model: nn.Module) -> list[inspect.Parameter]:
    return [p for p in all_forward_parameters(model)
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def first_argument(model: nn.Module) -> Optional[str]:
    params = forward_parameters(model)
    return params[0].name if params else None


def uninferable_input(model: nn.Module) -> Optional[str]:
    """Why no example input can be inferred for ``model`` whatever its layers are, or None:
    a ``forward(self, *inputs)`` takes any number of inputs."""
    params = all_forward_parameters(model)
    var = next((p for p in params if p.kind == p.VAR_POSITIONAL), None)
    named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if var is not None and not named:
        return (f"no example input: {type(model).__name__}.forward(*{var.name}) takes any "
                f"number of inputs; give them with --input-shape (one tensor) or 'input:' in "
                f"the config (a list: input: [{{shape: [...]}}, {{shape: [...]}}])")
    return None


def parse_dtype(text: Any, where: str) -> torch.dtype:
    if isinstance(text, torch.dtype):
        return text
    key = str(text).replace("torch.", "").strip().lower()
    if key not in _DTYPES:
        raise InputError(f"{where}: unknown dtype {text!r} (use one of: "
                         f"{', '.join(sorted(set(_DTYPES)))})")
    return _DTYPES[key]


def parse_shape(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p.strip() for p in re.split(r"[,x]", value.strip())]
        if len(parts) > 1 and parts[-1] == "":
            parts.pop()  # a trailing comma
        try:  # an empty field ("8,,32", "2,x,4") is an error, not a dimension to drop
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(f"{where}: shape {value!r} is not a list of integers") from None
    elif isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in value):
        dims = tuple(value)
    else:
        raise InputError(f"{where}: shape must be a list of integers, got {value!r}")
    if not dims or any(d <= 0 for d in dims):
        raise InputError(f"{where}: shape must have positive dimensions, got {list(dims)}")
    return dims


_TENSOR_KEYS = {"shape", "dtype", "high", "low"}


def parse_tensor_spec(raw: Any, where: str, origin: str = "config") -> TensorSpec:
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: expected a mapping with 'shape' (and 'dtype', 'high')")
    unknown = set(raw) - _TENSOR_KEYS
    if unknown:
        raise InputError(f"{where}: unknown key {sorted(unknown)[0]!r} "
                         f"(allowed: {', '.join(sorted(_TENSOR_KEYS))})")
    if "shape" not in raw:
        raise InputError(f"{where}: missing 'shape'")
    spec = TensorSpec(shape=parse_shape(raw["shape"], f"{where}.shape"),
                      dtype=parse_dtype(raw.get("dtype", "float32"), f"{where}.dtype"),
                      origin=origin)
    for key in ("high", "low"):
        if key in raw:
            v = raw[key]
            if not isinstance(v, int) or isinstance(v, bool):
                raise InputError(f"{where}.{key}: expected an integer, got {v!r}")
            setattr(spec, key, v)
    if spec.high is not None and spec.high <= spec.low:
        raise InputError(f"{where}: high ({spec.high}) must be greater than low ({spec.low})")
    if not (spec.dtype.is_floating_point or spec.dtype == torch.bool) and spec.high is None:
        spec.high = 2
    return spec


def parse_input(raw: Any, where: str, origin: str = "config") -> InputSpec:
    """The ``input:`` of the config (or of a target entry):

    - ``{shape: [...], dtype: ..., high: ...}``: one tensor, the first argument;
    - ``[spec, spec, ...]``: positional inputs in order (``forward(self, *inputs)``);
    - a mapping from argument name to a tensor spec, a list of specs (that argument is
      ``*args``), ``{value: ...}`` or a plain scalar (a non-tensor argument, passed as it is).
    """
    if isinstance(raw, Mapping) and "shape" in raw:
        return InputSpec({None: parse_tensor_spec(raw, where, origin)})
    if isinstance(raw, list):
        return InputSpec({None: _parse_list(raw, where, origin)})
    if isinstance(raw, Mapping) and raw:
        return InputSpec({str(k): _parse_arg(v, f"{where}.{k}", origin)
                          for k, v in raw.items()})
    raise InputError(f"{where}: expected {{shape: [...], dtype: ...}}, a list of such specs (the "
                     "positional inputs) or a mapping from argument name to such specs or "
                     "values")


def _parse_list(raw: list, where: str, origin: str) -> ArgList:
    if not raw:
        raise InputError(f"{where}: empty list of inputs")
    items: list[Union[TensorSpec, Value]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            hint = f" (a shape is written {{shape: {raw}}})" if all(
                isinstance(x, int) for x in raw) else ""
            raise InputError(f"{where}[{i}]: expected a tensor spec {{shape: [...]}} or "
                             f"{{value: ...}}, got {item!r}{hint}")
        arg = _parse_arg(item, f"{where}[{i}]", origin)
        assert not isinstance(arg, ArgList)
        items.append(arg)
    return ArgList(items, origin=origin)


def _parse_arg(raw: Any, where: str, origin: str) -> Arg:
    if isinstance(raw, Mapping):
        if set(raw) == {"value"}:
            return Value(raw["value"], origin=origin)
        if raw and not set(raw) & (_TENSOR_KEYS | {"value"}) \
                and all(isinstance(v, Mapping) for v in raw.values()):
            # a mapping argument: a spec per key
            items = {str(k): _parse_arg(v, f"{where}.{k}", origin) for k, v in raw.items()}
            bad = next((k for k, v in items.items() if not isinstance(v, (TensorSpec, Value))),
                       None)
            if bad is not None:
                raise InputError(f"{where}.{bad}: expected a tensor spec or {{value: ...}}")
            return DictArg(items, origin=origin)  # type: ignore[arg-type]
        return parse_tensor_spec(raw, where, origin)
    if isinstance(raw, list) and raw and all(isinstance(x, Mapping) for x in raw):
        return _parse_list(raw, where, origin)
    if raw is None or isinstance(raw, (bool, int, float, str, list)):
        return Value(raw, origin=origin)
    raise InputError(f"{where}: expected a tensor spec {{shape: [...]}}, a list of them or a "
                     f"value, got {raw!r}")


def input_to_data(spec: InputSpec) -> list:
    """A plain-JSON form of ``spec`` (for the subprocess mode); :func:`input_from_data` reads
    it back."""
    def arg(a: Arg) -> dict:
        if isinstance(a, TensorSpec):
            return {"tensor": {"shape": list(a.shape), "dtype": str(a.dtype).replace("torch.", ""),
                               "high": a.high, "low": a.low}, "origin": a.origin}
        if isinstance(a, Value):
            return {"value": a.value, "origin": a.origin}
        if isinstance(a, DictArg):
            return {"dict": [[k, arg(v)] for k, v in a.items.items()], "origin": a.origin}
        return {"items": [arg(i) for i in a.items], "origin": a.origin}

    return [[name, arg(a)] for name, a in spec.tensors.items()]


def input_from_data(data: list) -> InputSpec:
    def arg(d: dict) -> Arg:
        if "tensor" in d:
            t = d["tensor"]
            return TensorSpec(shape=tuple(t["shape"]), dtype=parse_dtype(t["dtype"], "dtype"),
                              high=t["high"], low=t["low"], origin=d["origin"])
        if "value" in d:
            return Value(d["value"], origin=d["origin"])
        if "dict" in d:
            return DictArg({k: arg(v) for k, v in d["dict"]},  # type: ignore[misc]
                           origin=d["origin"])
        return ArgList([arg(i) for i in d["items"]], origin=d["origin"])  # type: ignore[misc]

    return InputSpec({name: arg(a) for name, a in data})
