"""The config contract: profile selection and an exact, useful message for each invalid config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import BUILTIN_CONFIG_NAME, ConfigError, load_config, parse_config, select_profile

TWO_PROFILES = {
    "profile": "dev",
    "profiles": {
        "dev": {"models": [{"name": "a", "backend": "llamacpp", "path": "/m/a.gguf"}]},
        "prod": {"models": [{"name": "b", "backend": "paged", "path": "/m/b"}]},
        "staging": {"models": []},
    },
}


def _write(tmp_path: Path, data: object, name: str = "tandem.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _tandem(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def test_profile_from_file_key(tmp_path):
    config, source = load_config(_write(tmp_path, TWO_PROFILES))
    name, profile = select_profile(config, source, None)
    assert name == "dev"
    assert profile.models[0].name == "a"


def test_profile_flag_env_and_file_precedence(tmp_path):
    path = _write(tmp_path, TWO_PROFILES)
    from_file = _tandem("models", "--config", str(path))
    assert "profile 'dev'" in from_file.stdout
    from_env = _tandem("models", "--config", str(path), env={"TANDEM_PROFILE": "prod"})
    assert "profile 'prod'" in from_env.stdout
    assert "paged" in from_env.stdout
    flag_wins = _tandem(
        "models", "--config", str(path), "--profile", "staging", env={"TANDEM_PROFILE": "prod"}
    )
    assert "profile 'staging'" in flag_wins.stdout
    config_from_env = _tandem("models", env={"TANDEM_CONFIG": str(path), "TANDEM_PROFILE": "prod"})
    assert "profile 'prod'" in config_from_env.stdout


def test_models_command_lists_backends_and_aliases(tmp_path):
    data = {
        "profiles": {
            "dev": {
                "models": [
                    {"name": "tiny", "backend": "llamacpp", "path": "/nope.gguf", "aliases": ["x", "y"]}
                ]
            }
        }
    }
    result = _tandem("models", "--config", str(_write(tmp_path, data)))
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "tiny" in line)
    assert "llamacpp" in line and "x,y" in line and "(missing)" in line


def test_builtin_default_without_any_file(tmp_path):
    result = _tandem("models", cwd=tmp_path)  # no config/tandem.yaml here, no TANDEM_CONFIG
    assert result.returncode == 0, result.stderr
    assert BUILTIN_CONFIG_NAME in result.stdout
    assert "smollm2" in result.stdout and "default" in result.stdout


def test_repository_default_config_is_valid():
    config, _ = load_config(Path(__file__).parent.parent / "config" / "tandem.yaml")
    assert config.profile == "dev"
    assert {"dev", "prod"} <= set(config.profiles)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"profiles": {"dev": {"models": [{"name": "a", "backend": "vllm", "path": "x"}]}}},
            "profiles.dev.models[0].backend: Input should be 'llamacpp', 'paged' or 'remote'",
        ),
        (
            {"profiles": {"dev": {"models": [{"name": "a", "backend": "llamacpp"}]}}},
            "profiles.dev.models[0]: backend 'llamacpp' needs `path`",
        ),
        (
            {
                "profiles": {
                    "dev": {"models": [{"name": "a", "backend": "llamacpp", "path": "x", "colour": 1}]}
                }
            },
            "profiles.dev.models[0].colour: unknown key",
        ),
        (
            {
                "profiles": {
                    "dev": {
                        "models": [{"name": "a", "backend": "llamacpp", "path": "x", "context_length": -5}]
                    }
                }
            },
            "profiles.dev.models[0].context_length: Input should be greater than 0",
        ),
        (
            {
                "profiles": {
                    "dev": {
                        "models": [
                            {
                                "name": "a",
                                "backend": "llamacpp",
                                "path": "x",
                                "parameters": {"temperature": "warm"},
                            }
                        ]
                    }
                }
            },
            "profiles.dev.models[0].parameters.temperature: Input should be a valid number",
        ),
        (
            {
                "profiles": {
                    "dev": {
                        "models": [
                            {"name": "a", "backend": "llamacpp", "path": "x", "aliases": ["b"]},
                            {"name": "b", "backend": "llamacpp", "path": "y"},
                        ]
                    }
                }
            },
            "profiles.dev: model name or alias 'b' is used twice",
        ),
        (
            {"profiles": {"dev": {"models": [{"name": "bad name", "backend": "llamacpp", "path": "x"}]}}},
            "profiles.dev.models[0].name: 'bad name' is not a valid model name",
        ),
        ({"profile": "dev"}, "profiles: Field required"),
        (["a", "list"], "the file must hold a mapping"),
    ],
)
def test_invalid_config_messages(tmp_path, data, expected):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_invalid_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "profiles:\n  dev: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}: line \d+, column \d+: not valid YAML"):
        load_config(path)


def test_unknown_profile(tmp_path):
    config = parse_config(TWO_PROFILES, "f.yaml")
    with pytest.raises(
        ConfigError, match=r"f.yaml: profiles: profile 'qa' is not defined \(defined: dev, prod"
    ):
        select_profile(config, "f.yaml", "qa")
    bad_default = parse_config({**TWO_PROFILES, "profile": "qa"}, "f.yaml")
    with pytest.raises(ConfigError, match=r"f.yaml: profile: profile 'qa' is not defined"):
        select_profile(bad_default, "f.yaml", None)


def test_serve_fails_at_start_with_the_message(tmp_path):
    missing_model = {
        "profiles": {"dev": {"models": [{"name": "a", "backend": "llamacpp", "path": "/no/such.gguf"}]}}
    }
    result = _tandem("serve", "--config", str(_write(tmp_path, missing_model)), "--port", "0")
    assert result.returncode == 2
    assert (
        f"{tmp_path / 'tandem.yaml'}: profiles.dev.models[0].path: no such file or directory" in result.stderr
    )
    assert "Traceback" not in result.stderr

    not_a_model = tmp_path / "junk.gguf"
    not_a_model.write_bytes(b"this is not a gguf file")
    junk = {"profiles": {"dev": {"models": [{"name": "a", "backend": "llamacpp", "path": str(not_a_model)}]}}}
    result = _tandem("serve", "--config", str(_write(tmp_path, junk, "junk.yaml")), "--port", "0")
    assert result.returncode == 2
    assert "profiles.dev.models[0].path: backend 'llamacpp' expected a GGUF file" in result.stderr
    assert "Traceback" not in result.stderr

    result = _tandem("serve", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "absent.yaml: cannot read the config file" in result.stderr


def test_invalid_setting_is_reported(tmp_path):
    result = _tandem("models", "--config", str(_write(tmp_path, TWO_PROFILES)), env={"TANDEM_PORT": "eighty"})
    assert result.returncode == 2
    assert "invalid setting TANDEM_PORT" in result.stderr
