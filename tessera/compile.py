"""``tessera compile``: build the online read path's modules with Cython (features.compiled).

Each module of :data:`features.compiled.HOT` is turned into C by Cython (``-3``, annotations
not read as C types, so the module keeps Python's semantics exactly) and compiled with the C
compiler Python itself was built with (``sysconfig``'s ``LDSHARED``, or ``$LDSHARED``), two
at a time. A build is written under a temporary name and renamed, so a killed build leaves
nothing half written; the module's older builds are removed after. A module already built from its current source is
not built again.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from features.compiled import (
    HOT,
    PURE_ENV,
    build_of,
    compiled_dir,
    module_of,
    pure_python,
    source_of,
)

if TYPE_CHECKING:
    from rich.console import Console


class CompileError(RuntimeError):
    """A module could not be compiled (the message names it and the failing command)."""


@dataclass
class CompileSummary:
    folder: Path
    built: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)  # already built from this source
    failed: dict[str, str] = field(default_factory=dict)  # module -> one-paragraph reason
    seconds: float = 0.0


def compile_modules(modules: Sequence[str] = HOT, folder: Path | None = None, *,
                    force: bool = False, jobs: int = 2,
                    on_done: Callable[[str], None] | None = None) -> CompileSummary:
    """Build ``modules`` into ``folder`` (default :func:`features.compiled.compiled_dir`).

    A module that fails is reported in the summary and stays Python; the others are built."""
    began = time.perf_counter()
    out = CompileSummary(folder or compiled_dir())
    out.folder.mkdir(parents=True, exist_ok=True)
    todo: list[tuple[str, Path, str]] = []
    for module in modules:
        source = source_of(module)
        if source is None:
            out.failed[module] = f"no Python source found for module {module!r}"
            continue
        name = build_of(out.folder, module, source).name
        if not force and (out.folder / name).is_file():
            out.current.append(module)
            if on_done is not None:
                on_done(module)
            continue
        todo.append((module, source, name))

    def one(item: tuple[str, Path, str]) -> str | None:
        module, source, name = item
        try:
            _build(module, source, out.folder / name)
        except CompileError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for (module, _, name), error in zip(todo, pool.map(one, todo), strict=True):
            if error is None:
                out.built.append(module)
                _remove_older(out.folder, module, keep=name)
            else:
                out.failed[module] = error
            if on_done is not None:
                on_done(module)
    out.seconds = time.perf_counter() - began
    return out


def _build(module: str, source: Path, target: Path) -> None:
    cython = shutil.which("cython", path=str(Path(sys.executable).parent)) or shutil.which(
        "cython")
    if cython is None:
        raise CompileError(f"{module}: Cython is not installed (expected a `cython` command "
                           f"beside {sys.executable}); `uv sync` installs it")
    # LDSHARED as setuptools reads it: the environment's, else the one Python was built with
    cc = shlex.split(os.environ.get("LDSHARED") or sysconfig.get_config_var("LDSHARED")
                     or "cc -shared")
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory(prefix="tessera-compile-") as tmp:
        c_file = Path(tmp) / (module + ".c")
        _run([cython, "-3", "-X", "annotation_typing=False", "--module-name", module,
              "-o", str(c_file), str(source)], module)
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            _run([*cc, "-O2", "-fPIC", "-fwrapv", "-fno-strict-aliasing", f"-I{include}",
                  str(c_file), "-o", str(partial)], module)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)


def _run(command: list[str], module: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CompileError(f"{module}: `{shlex.join(command)}` failed: {e}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
        raise CompileError(f"{module}: `{shlex.join(command[:3])} ...` exited with "
                           f"{done.returncode}: " + " | ".join(tail))


def _remove_older(folder: Path, module: str, keep: str) -> None:
    """Delete ``module``'s builds from earlier sources (they can never load again)."""
    for p in folder.iterdir():
        if p.name != keep and module_of(p.name) == module:
            p.unlink(missing_ok=True)


def state(modules: Sequence[str] = HOT, folder: Path | None = None) -> list[tuple[str, str]]:
    """Per module, how it imports in a new process: from its build, or as Python and why."""
    folder = folder or compiled_dir()
    pure = pure_python()
    rows = []
    for module in modules:
        source = source_of(module)
        if source is None:
            rows.append((module, "Python: no source found"))
        elif not build_of(folder, module, source).is_file():
            rows.append((module, "Python: not built from its current source (tessera compile)"))
        elif pure:
            rows.append((module, f"Python: built, but {PURE_ENV} is set"))
        else:
            rows.append((module, "compiled"))
    return rows


def run(console: Console, *, force: bool = False, check: bool = False) -> int:
    """``tessera compile``: build (or with ``check`` only report) the read path's modules,
    with a progress bar and a summary; returns the exit code (1 if a module failed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    if not check:
        with Progress(TextColumn("compiling the online read path"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("compile", total=len(HOT))
            summary = compile_modules(force=force, on_done=lambda _: bar.advance(task))
        console.print(f"{len(summary.built)} built, {len(summary.current)} already built from "
                      f"their source, {len(summary.failed)} failed, in {summary.seconds:.1f} s "
                      f"({summary.folder})")
        for module, reason in summary.failed.items():
            console.print(f"[red]failed[/red] {reason}; {module} stays Python (same results, "
                          f"slower)", highlight=False)
    table = Table("module", "imports as", title="the online read path")
    for module, how in state():
        table.add_row(module, how)
    console.print(table)
    return 1 if not check and summary.failed else 0
