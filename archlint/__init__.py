"""archlint: find vanishing and exploding gradients in PyTorch architectures before training.

``import archlint`` is cheap; torch is imported when :func:`lint` is first called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .report.model import Report


def lint(model: Any, example_input: Any = None, *, select: Any = None, ignore: Any = None,
         options: Any = None, name: Any = None, fail_on: str = "warning",
         suppressions: bool = True, local_rules: Any = (), fixes: bool = True,
         timeout: Any = None) -> "Report":
    """Lint one model object and return the report the CLI prints.

    See :func:`archlint.api.lint` for the arguments. Example::

        report = archlint.lint(model, example_input=torch.randn(8, 3, 32, 32))
        assert not report.findings, report
    """
    from .api import lint as _lint

    return _lint(model, example_input, select=select, ignore=ignore, options=options, name=name,
                 fail_on=fail_on, suppressions=suppressions, local_rules=local_rules,
                 fixes=fixes, timeout=timeout)


__all__ = ["lint", "__version__"]
