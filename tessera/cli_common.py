"""What every ``tessera`` command shares: the ``--repo`` option, the consoles, loading the repo,
and :func:`_friendly` (a TesseraError as one red line and exit code 1).

Imports only Typer and the standard library at import time (rich and Tessera's own
modules inside the functions), so ``tessera --help`` answers at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

RepoOpt = Annotated[Path, typer.Option("--repo", "-r", help="Path to feature_repo.yaml.",
                                       envvar="TESSERA_REPO")]
DEFAULT_REPO = Path("feature_repo.yaml")

F = TypeVar("F", bound=Callable[..., Any])


#: Width of the consoles when the output is not a terminal (a pipe, a file, a CI log) and
#: COLUMNS is not set: rich would fall back to 80 columns and cut numbers in tables.
PIPE_WIDTH = 200
_OUR_PACKAGES = ("features", "pipelines", "streaming", "validation", "tessera")


def _width(stream: Any) -> int | None:
    """Console width for ``stream``: None (rich measures) on a terminal, else COLUMNS or 200."""
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return None
    import os

    columns = os.environ.get("COLUMNS", "").strip()
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH


def _error_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def _one_line_warnings(fallback: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` printing Tessera's warnings as one yellow line each.

    Other libraries' warnings go to ``fallback`` (Python's usual file:line rendering).
    """

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if category.__module__.split(".")[0] not in _OUR_PACKAGES:
            fallback(message, category, filename, lineno, file, line)
            return
        from rich.markup import escape

        _error_console().print(f"[bold yellow]warning:[/] {escape(str(message))}", markup=True)

    return show


def _friendly(fn: F) -> F:
    """Turn a TesseraError into one red line and exit code 1 (no traceback for user errors).

    Tessera's warnings print as one yellow line each (not Python's file:line + source line).
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import warnings

        from features.errors import TesseraError

        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            try:
                return fn(*args, **kwargs)
            except TesseraError as e:
                from rich.markup import escape

                _error_console().print(f"[bold red]error:[/] {escape(str(e))}", markup=True)
                raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, width=_width(sys.stdout))


def _config(repo: Path) -> Any:
    from features.config import load_config

    return load_config(repo)
