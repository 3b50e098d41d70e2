"""The CLI: bad arguments are one line and exit 1; output through a pipe is not cut to 80 columns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tessera.cli import app
from tests.conftest import REPO_ROOT

TESSERA = str(Path(sys.executable).with_name("tessera"))


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(("args", "line"), [
    (["--rows", "0"], "error: --rows: expected a whole number >= 1, got 0"),
    (["--rows", "-5"], "error: --rows: expected a whole number >= 1, got -5"),
    (["--days", "0"], "error: --days: expected a whole number >= 1, got 0"),
    (["--seed", "-1"], "error: --seed: expected a whole number in [0, 2**63), got -1"),
    (["--malformed-rate", "1.5"], "error: --malformed-rate: expected a fraction in [0, 1], got 1.5"),
    (["--malformed-rate", "-0.1"],
     "error: --malformed-rate: expected a fraction in [0, 1], got -0.1"),
    (["--malformed-rate", "nan"], "error: --malformed-rate: expected a fraction in [0, 1], got nan"),
    (["--days", "10000000"], "error: --days: 10000000 days from --start 2026-01-05T00:00:00 end "
                             "after the year 9999 (expected a smaller --days or an earlier --start)"),
])
def test_generate_rejects_bad_arguments_in_one_line(tmp_path: Path, args: list[str],
                                                    line: str) -> None:
    code, output = invoke("generate", "--out", str(tmp_path / "data"), *args)
    assert (code, output) == (1, line + "\n")
    assert not (tmp_path / "data").exists()


def test_generate_refuses_an_out_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    code, output = invoke("generate", "--out", str(tmp_path / "data"), "--rows", "10")
    assert code == 1
    assert output == (f"error: --out: {str(tmp_path / 'data')!r} is a file (expected a folder, or "
                      f"a path that does not exist yet, for transactions/date=.../part-0000.parquet)\n")


def test_generate_below_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    code, output = invoke("generate", "--out", str(tmp_path / "data" / "sub"), "--rows", "10")
    assert code == 1
    [line] = [x for x in output.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: --out {str(tmp_path / 'data' / 'sub')!r}: cannot write ")
    assert "Traceback" not in output


def test_repo_may_name_the_folder(tmp_path: Path) -> None:
    (tmp_path / "feature_repo.yaml").write_text("project: shop\n")
    code, output = invoke("config", "--repo", str(tmp_path))
    assert code == 0 and '"project": "shop"' in output
    (tmp_path / "feature_repo.yaml").unlink()
    assert invoke("config", "--repo", str(tmp_path)) == (
        1, f"error: {tmp_path}: is a folder without a feature_repo.yaml (expected the file or its "
           f"folder)\n")


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example definitions over three days of generated data, in a folder of its own."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copy(REPO_ROOT / "example" / "card_features.py", root / "defs.py")
    (root / "feature_repo.yaml").write_text("project: t\ndefinitions: [defs.py]\n")
    subprocess.run([TESSERA, "generate", "--out", str(root / "data"), "--rows", "3000",
                    "--days", "3", "--start", "2026-01-05"], check=True, capture_output=True)
    return root


def run_through_a_pipe(repo: Path, **env: str) -> list[str]:
    """The lines of the summary table ``tessera run`` prints when stdout is a pipe."""
    environ = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | env
    done = subprocess.run([TESSERA, "run", "--repo", str(repo), "--start", "2026-01-05",
                           "--end", "2026-01-08"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, env=environ, check=True)
    table = [line for line in done.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert table, done.stdout
    return table


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("│┃").split("│" if line[0] == "│" else "┃")]


def test_a_table_through_a_pipe_is_not_cut_to_80_columns(small_repo: Path) -> None:
    table = run_through_a_pipe(small_repo)
    assert not any("…" in line for line in table), "\n".join(table)
    header = cells(next(line for line in table if line.startswith("┃")))
    assert {"view", "read", "rejected", "partials"} <= set(header)
    rows = {c[0]: c for c in (cells(line) for line in table if line.startswith("│")) if c[0]}
    assert set(rows) == {"user_spend", "merchant_activity"}, "\n".join(table)
    assert all(row[header.index("read")] == "3,000" for row in rows.values())
    assert max(len(line) for line in table) > 80


def test_columns_is_respected_through_a_pipe(small_repo: Path) -> None:
    table = run_through_a_pipe(small_repo, COLUMNS="60")
    assert max(len(line) for line in table) <= 60
