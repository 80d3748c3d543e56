"""API keys and tokens: what is refused at start, and the keys made for demos."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import Settings
from pipeline.credentials import ensure_key_file, generate_key, weakness
from pipeline.exceptions import ConfigError


@pytest.mark.parametrize(
    "key",
    ["short", "demo-key-change-me", "replace-me-key", "TEST-Qw9Er7Ty5Ui3Op", "my-demo-Qw9Er7Ty5Ui3",
     "changeme-Qw9Er7Ty5Ui3", "0000000000000000000", "abababababababababab"],
)
def test_weak_keys(key: str) -> None:
    assert weakness(key) is not None


@pytest.mark.parametrize("key", ["Kq7vM2pXr9LwB4nZ", "shop-Hq8Vn3Lk5Rz2Wx", "e2e-key-1234567890"])
def test_strong_keys(key: str) -> None:
    assert weakness(key) is None


def test_generated_keys_pass_and_differ() -> None:
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50 and all(weakness(k) is None and len(k) >= 32 for k in keys)


def test_settings_refuse_a_weak_key_naming_the_variable_not_the_key() -> None:
    with pytest.raises(ConfigError, match="SESSIONIZER_API_KEYS") as caught:
        Settings(api_keys="Kq7vM2pXr9LwB4nZ:shop,replace-me-key:blog").api_key_map  # noqa: B018
    assert "replace-me-key" not in str(caught.value) and "'blog'" in str(caught.value)


def test_key_file_is_made_once_private_and_read_by_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "api-keys"
    key, made = ensure_key_file(path, "demo")
    assert made and weakness(key) is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_key_file(path, "demo") == (key, False)
    assert Settings(api_keys_file=str(path)).api_key_map == {key: "demo"}
    # SESSIONIZER_API_KEYS, when set, wins over the file
    assert Settings(api_keys="Kq7vM2pXr9LwB4nZ:shop", api_keys_file=str(path)).api_key_map == {
        "Kq7vM2pXr9LwB4nZ": "shop"
    }
    with pytest.raises(ConfigError, match="SESSIONIZER_API_KEYS_FILE"):
        Settings(api_keys_file=str(tmp_path / "missing")).api_key_map  # noqa: B018


def test_api_key_command_prints_a_key_and_keeps_one_in_a_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["api-key"])
    assert result.exit_code == 0 and weakness(result.output.strip()) is None
    path = tmp_path / "api-keys"
    first = CliRunner().invoke(main, ["api-key", "--file", str(path), "--project", "demo"])
    again = CliRunner().invoke(main, ["api-key", "--file", str(path), "--project", "demo"])
    key = path.read_text().strip().split(":")[0]
    assert first.output.startswith("new API key for project 'demo'") and key in first.output
    assert again.output.startswith("existing API key") and key in again.output
