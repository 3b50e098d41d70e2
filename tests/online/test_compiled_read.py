"""The online read path compiled (features/compiled.py, ``tessera compile``): the same values,
statuses and event times bit for bit as the same modules run as Python, and an edited module
never imports as its old build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from features.compiled import HOT, PURE_ENV, artifact_name
from features.store import FeatureStore
from tessera.compile import compile_modules
from tests.online.repo import REPO_ROOT, ids, today

READ = """
import json, sys
from datetime import datetime
import features
from features.compiled import HOT, is_compiled
from features.store import FeatureStore
args = json.loads(sys.argv[1])
store = FeatureStore(args["repo"])
out = {"reads": []}
def plain(v):
    if isinstance(v, float):
        return ["float", v.hex()]  # the bits, not a rounding of them
    if isinstance(v, datetime):
        return ["datetime", v.isoformat()]
    return v
for view, key, keys in args["reads"]:
    feats = [f"{view}:{f.name}" for f in store.definitions.views[view].features]
    for now in args["nows"]:
        for rows in ([{key: k} for k in keys], [{key: keys[0]}], [{key: keys[-1]}]):
            r = store.get_online_features(feats, rows, now=now)
            out["reads"].append({k: [plain(v) for v in col] for k, col in r.to_dict(
                include_event_timestamps=True).items()} | {"statuses": r.status_dict()})
out["compiled"] = sorted(m for m in HOT if is_compiled(sys.modules[m]))  # all read by now
print(json.dumps(out))
"""


def run_python(code: str, *args: str, builds: Path, pure: bool,
               path: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TESSERA_COMPILED_DIR=str(builds), PYTHONPATH=str(path))
    env.pop(PURE_ENV, None)
    if pure:
        env[PURE_ENV] = "1"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("builds")
    summary = compile_modules(HOT, folder)
    assert summary.failed == {}, summary.failed
    assert sorted(summary.built) == sorted(HOT)
    return folder


@pytest.mark.slow
def test_compiled_reads_equal_python_reads_bit_for_bit(materialized: FeatureStore,
                                                       builds: Path) -> None:
    reads = [("user_spend", "user_id", ids(materialized, "user_id", 60)),
             ("merchant_activity", "merchant_id", ids(materialized, "merchant_id", 60))]
    nows = [(today() + d).isoformat() for d in (timedelta(minutes=10), timedelta(hours=1, minutes=5),
                                                 timedelta(days=8), timedelta(days=31))]
    arg = json.dumps({"repo": str(materialized.config.root), "reads": reads, "nows": nows})
    got = {}
    for pure in (False, True):
        done = run_python(READ, arg, builds=builds, pure=pure)
        assert done.returncode == 0, done.stderr[-2000:]
        got[pure] = json.loads(done.stdout)
    assert got[False]["compiled"] == sorted(HOT)  # every module of the path from its build
    assert got[True]["compiled"] == []
    assert len(got[True]["reads"]) == 2 * 4 * 3
    assert got[False]["reads"] == got[True]["reads"]


MODULE = "def value():\n    return {v!r} / 3.0\n\ndef kind():\n    return type(value).__name__\n"
CHECK = ("import features, json, tpkg.mod as m\nfrom features.compiled import is_compiled\n"
         "print(json.dumps([is_compiled(m), m.value().hex()]))")


def test_an_edited_module_imports_as_python_never_as_its_old_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, builds = tmp_path / "src", tmp_path / "builds"
    (src / "tpkg").mkdir(parents=True)
    (src / "tpkg" / "__init__.py").write_text("")
    mod = src / "tpkg" / "mod.py"
    mod.write_text(MODULE.format(v=1.0))
    monkeypatch.syspath_prepend(str(src))

    def imported() -> list:
        done = run_python(CHECK, builds=builds, pure=False, path=src)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    assert compile_modules(["tpkg.mod"], builds).built == ["tpkg.mod"]
    assert imported() == [True, (1.0 / 3.0).hex()]
    mod.write_text(MODULE.format(v=2.0))  # edited after its build
    assert imported() == [False, (2.0 / 3.0).hex()]  # the new source, as Python
    again = compile_modules(["tpkg.mod"], builds)
    assert again.built == ["tpkg.mod"] and again.current == []
    assert imported() == [True, (2.0 / 3.0).hex()]
    assert [p.name for p in builds.iterdir()] == [artifact_name("tpkg.mod", mod.read_bytes())]
    assert compile_modules(["tpkg.mod"], builds).current == ["tpkg.mod"]  # up to date: no build
    done = run_python(CHECK, builds=builds, pure=True, path=src)
    assert json.loads(done.stdout) == [False, (2.0 / 3.0).hex()]


def test_a_failed_build_names_the_module_and_leaves_it_python(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, builds = tmp_path / "src", tmp_path / "builds"
    (src / "tpkg").mkdir(parents=True)
    (src / "tpkg" / "__init__.py").write_text("")
    (src / "tpkg" / "mod.py").write_text(MODULE.format(v=1.0))
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.setenv("LDSHARED", "false")  # a C compiler that always fails
    summary = compile_modules(["tpkg.mod", "tpkg.absent"], builds)
    assert summary.built == []
    assert "tpkg.mod:" in summary.failed["tpkg.mod"] and "exited with 1" in summary.failed[
        "tpkg.mod"]
    assert summary.failed["tpkg.absent"] == "no Python source found for module 'tpkg.absent'"
    assert list(builds.iterdir()) == []  # nothing half written
    done = run_python(CHECK, builds=builds, pure=False, path=src)
    assert json.loads(done.stdout) == [False, (1.0 / 3.0).hex()]
