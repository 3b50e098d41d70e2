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
    # Five fields, but minute 61 does not exist: APScheduler's own parser says why, in one line.
    path = write(tmp_path, "project: shop\nschedules: [{name: a, cron: '61 6 * * *', job: run}]\n")
    msg = error_of(path)
    assert len(msg.splitlines()) == 1
    assert "schedules.0.cron: not a valid cron expression '61 6 * * *'" in msg
    path = write(tmp_path, "project: shop\nschedules: [{name: a, cron: '0 6 * * *', job: train}]\n")
    assert ("schedules.0.job: Input should be 'drift', 'run', 'materialize' or 'online-gc'"
            in error_of(path))
    # A drift job `tessera drift` would refuse at run time is refused at load.
    path = write(tmp_path, "project: shop\nschedules: [{name: a, cron: '0 6 * * *', job: drift, "
                           "args: {reference: '2026-01-01..2026-02-01', current: x}}]\n")
    assert ("schedules.0: a drift job with a window as reference needs args view or service"
            in error_of(path))


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
    msg = error_of(path, {"TESSERA__ONLINE__URLL": "redis://a:1/0"})
    assert msg.startswith("environment variable TESSERA__ONLINE__URLL: unknown key 'online.urll' ")


def test_an_unknown_section_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "project: shop\nonline: {url: 'redis://a:1/0'}\n")
    msg = error_of(path, {"TESSERA__ONLNE__URL": "redis://cache:6379/0"})
    assert msg == ("environment variable TESSERA__ONLNE__URL: unknown key 'onlne' (check the "
                   "spelling: TESSERA__<SECTION>__<KEY>; see docs/configuration.md)")
    assert str(path) not in msg


def test_a_wrong_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "project: shop\nonline: {url: 'redis://a:1/0'}\n")
    msg = error_of(path, {"TESSERA__SERVICES__REDIS__PORT": "lots",
                          "TESSERA__ONLINE__URL": "http://cache"})
    assert msg.splitlines() == [
        "environment variable TESSERA__ONLINE__URL: online.url: expected a redis://, rediss:// "
        "or unix:// URL, got 'http://cache'",
        "environment variable TESSERA__SERVICES__REDIS__PORT: services.redis.port: Input should "
        "be a valid integer, unable to parse string as an integer (got 'lots')",
    ]


def test_a_whole_section_from_the_environment_and_the_file_are_told_apart(
        tmp_path: Path) -> None:
    path = write(tmp_path, "project: shop\nkafka: {bootstrap_servers: nope}\n")
    msg = error_of(path, {"TESSERA__SCHEDULES": "[{name: a, cron: '* * * * *'}]"})
    assert msg.splitlines() == [
        f"{path}: kafka.bootstrap_servers: expected host:port[,host:port...], got 'nope'",
        "environment variable TESSERA__SCHEDULES: schedules.0.job: required key is missing",
    ]


def test_an_override_below_a_plain_value_names_the_variable(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "project: shop\n"), {"TESSERA__PROJECT__NAME": "x"})
    assert msg.startswith("environment variable TESSERA__PROJECT__NAME: 'project' is not a "
                          "section")


def test_a_value_that_is_not_yaml_is_kept_as_a_string(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "project: shop\n"),
                      environ={"TESSERA__SPARK__APP_NAME": "@nightly: run"})
    assert cfg.spark.app_name == "@nightly: run"


def test_repo_may_be_the_folder_of_the_file(tmp_path: Path) -> None:
    write(tmp_path, "project: shop\n")
    cfg = load_config(tmp_path, environ={})
    assert cfg.project == "shop" and cfg.root == tmp_path.resolve()


def test_a_folder_without_the_file_is_one_line(tmp_path: Path) -> None:
    assert error_of(tmp_path) == (f"{tmp_path}: is a folder without a feature_repo.yaml "
                                  f"(expected the file or its folder)")


def test_config_is_immutable(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "project: shop\n"), environ={})
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        cfg.project = "other"  # type: ignore[misc]
    assert isinstance(cfg, RepoConfig)


def test_the_redis_cluster_is_off_by_default_on_three_ports(tmp_path: Path) -> None:
    cluster = load_config(write(tmp_path, "project: shop\n"), environ={}).services.redis_cluster
    assert not cluster.enabled
    assert cluster.ports == (7001, 7002, 7003)
    cfg = load_config(write(tmp_path, "project: shop\n"), environ={
        "TESSERA__SERVICES__REDIS_CLUSTER__ENABLED": "true",
        "TESSERA__SERVICES__REDIS_CLUSTER__PORTS": "[7101, 7102, 7103, 7104]",
    })
    assert cfg.services.redis_cluster.enabled
    assert cfg.services.redis_cluster.ports == (7101, 7102, 7103, 7104)


@pytest.mark.parametrize(("ports", "problem"), [
    ("[7001, 7002]", "a Redis Cluster needs at least 3 masters (ports), got [7001, 7002]"),
    ("[7001, 7002, 7001]", "ports must differ, got [7001, 7002, 7001]"),
    ("[7001, 7002, 60000]", "each port must be 1..55535 (its cluster bus is port + 10000), "
                            "got [60000]"),
])
def test_bad_redis_cluster_ports_are_one_line(tmp_path: Path, ports: str, problem: str) -> None:
    path = write(tmp_path, f"project: shop\nservices:\n  redis_cluster: {{ports: {ports}}}\n")
    msg = error_of(path)
    assert msg.startswith(f"{path}: services.redis_cluster.ports: {problem}"), msg
    assert len(msg.splitlines()) == 1


def test_serve_defaults_to_loopback_without_a_token(tmp_path: Path) -> None:
    serve = load_config(write(tmp_path, "project: shop\n"), environ={}).serve
    assert (serve.host, serve.port, serve.max_entities, serve.max_body_bytes) == (
        "127.0.0.1", 6566, 1000, 1 << 20)
    assert serve.resolve_token(environ={}) is None


def test_serve_token_comes_from_the_named_variable_and_never_shows(tmp_path: Path) -> None:
    path = write(tmp_path, "project: shop\nserve: {token_env: SHOP_TOKEN}\n")
    serve = load_config(path, environ={}).serve
    assert serve.resolve_token(environ={"SHOP_TOKEN": "abc"}) == "abc"
    with pytest.raises(ConfigError, match="'SHOP_TOKEN' is not set or empty"):
        serve.resolve_token(environ={})
    cfg = load_config(write(tmp_path, "project: shop\n"),
                      environ={"TESSERA__SERVE__TOKEN": "s3cret"})
    assert cfg.serve.resolve_token(environ={}) == "s3cret"
    assert "s3cret" not in cfg.model_dump_json() and "s3cret" not in repr(cfg)


@pytest.mark.parametrize(("yaml", "problem"), [
    ("{token: abc, token_env: X}", "serve.token_env: give serve.token or serve.token_env"),
    ("{token: 123456}", "serve.token: must be a string"),
    ("{token: ''}", "serve.token: is empty"),
    ("{max_entities: 0}", "serve.max_entities: Input should be greater than or equal to 1"),
])
def test_bad_serve_settings_are_one_line_and_never_echo_a_token(tmp_path: Path, yaml: str,
                                                                problem: str) -> None:
    msg = error_of(write(tmp_path, f"project: shop\nserve: {yaml}\n"))
    assert problem in msg and len(msg.splitlines()) == 1, msg
    assert "123456" not in msg and "'abc'" not in msg


@pytest.mark.parametrize("section", ["offline", "online", "kafka", "stream", "spark", "registry",
                                     "scheduler", "serve"])
def test_every_setting_of_a_section_is_documented_with_its_default(section: str) -> None:
    """docs/configuration.md has a row ``| `section.key` | `default` | …`` for every key: a
    default changed in code and not in the table (as `stream.max_batch_events` once was) fails."""
    import re

    rows = {}
    for line in (REPO_ROOT / "docs" / "configuration.md").read_text().splitlines():
        m = re.match(r"\| `([\w.]+)` \| (.*?) \|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    model = RepoConfig.model_fields[section].annotation
    problems = []
    for name, field in model.model_fields.items():  # type: ignore[union-attr]
        key, default = f"{section}.{name}", field.default
        if key not in rows:
            problems.append(f"{key}: no row")
        elif default is None:
            if rows[key] != "(none)":
                problems.append(f"{key}: {rows[key]}, expected (none)")
        elif isinstance(default, bool):
            if rows[key] != f"`{str(default).lower()}`":
                problems.append(f"{key}: {rows[key]}, expected `{str(default).lower()}`")
        elif isinstance(default, int | float):
            if rows[key].strip("`") != str(default) and \
                    float(rows[key].strip("`")) != float(default):
                problems.append(f"{key}: {rows[key]}, expected `{default}`")
        elif isinstance(default, str | Path) and rows[key] != f"`{default}`":
            problems.append(f"{key}: {rows[key]}, expected `{default}`")
    assert problems == []
