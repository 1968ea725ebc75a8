"""Which files a ``local-rules`` entry of the config names.

Each is the user's code, imported like the model files archlint lints
(:func:`archlint.loading.build.import_file`: by path, once per process, prints sent to stderr,
an error reduced to one line that names the file).
"""

from __future__ import annotations

from pathlib import Path

#: Files of a rules folder that are not rule modules: pytest's test files and conftest.
_NOT_RULES = ("test_*.py", "*_test.py", "conftest.py")


def rule_module_files(path: Path) -> list[Path]:
    """``path`` itself for a ``.py`` file; for a folder, the ``.py`` files directly inside it,
    except private ones (``_helpers.py``, ``__init__.py``) and test files."""
    if path.is_file():
        return [path] if path.suffix == ".py" else []
    return sorted(p for p in path.glob("*.py")
                  if not p.name.startswith("_") and not any(p.match(pat) for pat in _NOT_RULES))

