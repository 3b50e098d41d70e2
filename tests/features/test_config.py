"""feature_repo.yaml: parsed into validated models; every mistake is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.config import RepoConfig, load_config
from features.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "feature_repo.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    return str(info.value)


def test_the_shipped_repo_config_is_valid() -> None:
    cfg = load_config(REPO_ROOT / "feature_repo.yaml", environ={})
    assert cfg.project == "cards"
    assert cfg.services.redis.port == 6390
    assert cfg.online.url.endswith(":6390/0")
    assert cfg.schedules[0].job == "drift"


def test_defaults_fill_everything_but_the_project(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "project: shop\n"), environ={})
    assert cfg.offline.path == Path(".tessera/offline")
    assert cfg.resolve(cfg.offline.path) == (tmp_path / ".tessera/offline").resolve()
    assert cfg.spark.master == "local[2]"


def test_unknown_key_names_the_dotted_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "project: shop\nonline:\n  urll: redis://x:1/0\n")
    msg = error_of(path)
    assert msg == f"{path}: online.urll: unknown key (check the spelling; see docs/configuration.md)"


def test_wrong_type_names_the_key_and_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, "project: shop\nservices:\n  redis:\n    port: lots\n")
    msg = error_of(path)
    assert len(msg.splitlines()) == 1
    assert msg.startswith(f"{path}: services.redis.port: ")
    assert "'lots'" in msg


def test_bad_redis_url_and_cron_are_explained(tmp_path: Path) -> None:
    path = write(tmp_path, "project: shop\nonline: {url: 'http://x'}\n")
    assert "online.url: expected a redis://" in error_of(path)
    path = write(tmp_path, "project: shop\nschedules: [{name: a, cron: '* *', job: drift}]\n")
    assert "schedules.0.cron: expected a 5-field cron expression" in error_of(path)


def test_missing_project_and_missing_file(tmp_path: Path) -> None:
    assert error_of(write(tmp_path, "offline: {path: x}\n")).endswith("project: required key is missing")
    assert "file not found" in error_of(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "project: shop\nonline: [unclosed\n"))
    assert "not valid YAML" in msg and "line" in msg


def test_environment_overrides_file_values_with_typed_scalars(tmp_path: Path) -> None:
    path = write(tmp_path, "project: shop\nservices: {redis: {port: 6390}}\n")
    cfg = load_config(path, environ={
        "TESSERA__SERVICES__REDIS__PORT": "7001",
        "TESSERA__ONLINE__URL": "redis://cache:6379/2",
        "UNRELATED": "x",
    })
    assert cfg.services.redis.port == 7001
    assert cfg.online.url == "redis://cache:6379/2"


def test_a_misspelt_environment_override_is_an_error_not_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "project: shop\n")
    assert "online.urll: unknown key" in error_of(path, {"TESSERA__ONLINE__URLL": "redis://a:1/0"})


def test_config_is_immutable(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "project: shop\n"), environ={})
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        cfg.project = "other"  # type: ignore[misc]
    assert isinstance(cfg, RepoConfig)
