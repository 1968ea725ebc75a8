"""Everything archlint knows about each operation, one row per op (:mod:`.table`).

The rows live in family modules, each holding its ops' layers and functions, shape rules and
gradient-estimate rules side by side:

- :mod:`.activations` -- elementwise activations, softmax, GLU (moment laws, saturation);
- :mod:`.linear` -- linear, bilinear, convolutions, embeddings, matmul;
- :mod:`.contract` -- einsum between activations;
- :mod:`.norms` -- batch/layer/group/instance/RMS norm;
- :mod:`.pooling` -- pooling and reductions;
- :mod:`.joins` -- sums, products, concatenation;
- :mod:`.shape_ops` -- views, indexing, splits, casts, padding, upsampling, dropout;
- :mod:`.windows` -- unfold (im2col) and fold;
- :mod:`.attention` -- multi-head and scaled-dot-product attention;
- :mod:`.recurrent` -- RNN / LSTM / GRU (simulated);
- :mod:`.elementwise` -- other arithmetic, comparisons, random tensors, factories;
- :mod:`.opaque` -- what has no formula, estimated by running it alone.

Importing this package fills the table.
"""

from __future__ import annotations

from . import (activations, attention, contract, elementwise, joins, linear, norms,  # noqa: F401
               opaque, pooling, recurrent, shape_ops, windows)
from .classify import carries_gradient, classify_call, classify_module, is_leaf_module
from .table import OPS, Op, canonical_name, function_op, module_op, op_info

__all__ = ["OPS", "Op", "canonical_name", "carries_gradient", "classify_call",
           "classify_module", "function_op", "is_leaf_module", "module_op", "op_info"]
