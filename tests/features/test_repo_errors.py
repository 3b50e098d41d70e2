"""A broken definitions file is one line: file, line in that file, exception type and message."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.config import RepoConfig, load_config
from features.errors import DefinitionError
from features.repo import DefinitionWarning, load_definitions


@pytest.fixture(autouse=True)
def _outside_tmp_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths below the working folder are shown relative; keep tmp_path outside it."""
    monkeypatch.chdir(Path(__file__).parent)


def repo(tmp_path: Path, body: str, name: str = "defs.py") -> RepoConfig:
    (tmp_path / name).write_text(body)
    (tmp_path / "feature_repo.yaml").write_text(f"project: t\ndefinitions: [{name}]\n")
    return load_config(tmp_path / "feature_repo.yaml", environ={})


def error_of(cfg: RepoConfig) -> str:
    with pytest.raises(DefinitionError) as info:
        load_definitions(cfg)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_syntax_error_names_its_own_line(tmp_path: Path) -> None:
    cfg = repo(tmp_path, "from features import col\n\nx = (col('a')\ny = 1\n")
    msg = error_of(cfg)
    assert msg.startswith(f"{tmp_path / 'defs.py'}:3: SyntaxError: ")
    assert "never closed" in msg


def test_name_error_names_the_line_and_suggests(tmp_path: Path) -> None:
    cfg = repo(tmp_path, "from features import col\nx = 1\n\ny = col2('amount')\n")
    assert error_of(cfg) == (f"{tmp_path / 'defs.py'}:4: NameError: name 'col2' is not defined "
                             f"(did you mean 'col'?)")


def test_an_error_in_a_function_is_the_deepest_line_in_the_file(tmp_path: Path) -> None:
    cfg = repo(tmp_path, "def rate():\n    return {}['EUR']\n\n\nTO_EUR = rate()\n")
    assert error_of(cfg) == f"{tmp_path / 'defs.py'}:2: KeyError: 'EUR'"


def test_an_error_deep_in_a_library_points_at_the_calling_line(tmp_path: Path) -> None:
    cfg = repo(tmp_path, "import json\n\njson.loads('{nope')\n")
    msg = error_of(cfg)
    assert msg.startswith(f"{tmp_path / 'defs.py'}:3: JSONDecodeError: Expecting property name")


def test_missing_module_and_missing_name(tmp_path: Path) -> None:
    msg = error_of(repo(tmp_path, "import nosuchmodule\n"))
    assert msg == f"{tmp_path / 'defs.py'}:1: ModuleNotFoundError: No module named 'nosuchmodule'"
    msg = error_of(repo(tmp_path, "from features import Entity\nfrom features import coll\n"))
    assert msg.startswith(f"{tmp_path / 'defs.py'}:2: ImportError: cannot import name 'coll' "
                          f"from 'features'")
    assert msg.endswith("(did you mean 'col'?)")


def test_a_builders_definition_error_keeps_its_message_after_file_and_line(
        tmp_path: Path) -> None:
    cfg = repo(tmp_path, "from features import agg, col\n\ns = agg.sum(col('a'), windows=[], "
                         "name='s')\n")
    msg = error_of(cfg)
    assert msg.startswith(f"{tmp_path / 'defs.py'}:3: 's': sum needs windows")
    assert "DefinitionError" not in msg


def test_a_multi_line_message_becomes_one_line(tmp_path: Path) -> None:
    cfg = repo(tmp_path, "raise ValueError('first\\nsecond')\n")
    assert error_of(cfg) == f"{tmp_path / 'defs.py'}:1: ValueError: first; second"


def test_sys_exit_in_a_definitions_file_is_an_error_not_an_exit(tmp_path: Path) -> None:
    assert error_of(repo(tmp_path, "import sys\nsys.exit(3)\n")).endswith(":2: SystemExit: 3")


def test_a_failed_file_leaves_no_module_behind(tmp_path: Path) -> None:
    before = {name for name in sys.modules if name.startswith("tessera_repo_")}
    error_of(repo(tmp_path, "x = 1\nraise RuntimeError('half way')\n"))
    after = {name for name in sys.modules if name.startswith("tessera_repo_")}
    assert after == before


def test_a_path_below_the_working_folder_is_shown_relative(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = repo(tmp_path, "x = 1\ny = col2\n")
    monkeypatch.chdir(tmp_path)
    assert error_of(cfg) == "defs.py:2: NameError: name 'col2' is not defined"


@pytest.mark.parametrize("stem", ["features", "pipelines", "streaming", "validation", "tessera"])
def test_a_file_named_like_a_package_warns(tmp_path: Path, stem: str) -> None:
    cfg = repo(tmp_path, "x = 1\n", name=f"{stem}.py")
    with pytest.warns(DefinitionWarning, match=rf"{stem}\.py.* shadows Tessera's '{stem}' package"):
        load_definitions(cfg)


def test_other_file_names_do_not_warn(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_definitions(repo(tmp_path, "x = 1\n", name="card_features.py"))


def test_the_example_does_not_shadow_a_package(repo_config: RepoConfig) -> None:
    assert [p.name for p in repo_config.definitions] == ["card_features.py"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DefinitionWarning)
        defs = load_definitions(repo_config)
    assert "user_spend" in defs.views


def test_cli_prints_one_red_line_and_exits_1(tmp_path: Path) -> None:
    from tessera.cli import app

    repo(tmp_path, "from features import col\nx = 1\ny = col2\n")
    result = CliRunner().invoke(app, ["apply", "--repo", str(tmp_path / "feature_repo.yaml")])
    assert result.exit_code == 1
    assert result.output == (f"error: {tmp_path / 'defs.py'}:3: NameError: name 'col2' is not "
                             f"defined (did you mean 'col'?)\n")


def test_cli_prints_the_shadowing_warning_as_one_line(tmp_path: Path) -> None:
    from tessera.cli import app

    repo(tmp_path, "y = col2\n", name="features.py")  # fails after the warning: no Feast needed
    result = CliRunner().invoke(app, ["apply", "--repo", str(tmp_path / "feature_repo.yaml")])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 2, result.output
    assert lines[0].startswith(f"warning: {tmp_path / 'features.py'}: a definitions file named "
                               f"'features.py' shadows Tessera's 'features' package")
    assert lines[1].startswith("error: ")


def test_a_malformed_expectation_is_one_line_at_apply(tmp_path: Path) -> None:
    from tessera.cli import app

    repo(tmp_path, "from features import Source, expect\n"
                   "src = Source(name='txns', path='x', timestamp_field='ts',\n"
                   "             schema={'amount': 'float64', 'ts': 'timestamp'},\n"
                   "             expectations=[expect.between('amonut', min=0)])\n")
    result = CliRunner().invoke(app, ["apply", "--repo", str(tmp_path / "feature_repo.yaml")])
    assert result.exit_code == 1
    assert result.output == ("error: source 'txns': expectation between: no column 'amonut' in "
                             "the source's schema (did you mean 'amount'?)\n")
    # A wrong argument to a builder is the file and line, like any other definitions error.
    repo(tmp_path, "from features import expect\nchecks = [expect.fresh(max_age='soon')]\n")
    result = CliRunner().invoke(app, ["apply", "--repo", str(tmp_path / "feature_repo.yaml")])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert result.output.startswith(f"error: {tmp_path / 'defs.py'}:2: ")
