"""agents.yaml12: configuration and policy files are read as YAML 1.2, duplicate keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.config import load_learning_config
from agents.settings import SettingsError
from agents.topics import TopicCatalogError, load_catalog
from agents.yaml12 import YAMLFileError, load_yaml


def test_yaml_1_1_booleans_and_octals_are_plain_values() -> None:
    document = load_yaml("a: NO\nb: off\nc: Yes\nd: 0755\ne: 0o755\nf: true\ng: '1.10'\n")
    assert document == {"a": "NO", "b": "off", "c": "Yes", "d": 755, "e": 493, "f": True,
                        "g": "1.10"}  # fmt: skip


def test_sexagesimal_numbers_are_text() -> None:
    assert load_yaml("t: 1:20\n") == {"t": "1:20"}


def test_a_key_given_twice_is_refused_naming_the_place_not_the_value() -> None:
    with pytest.raises(YAMLFileError, match=r"f.yaml, line 3, column 1: a key is given twice") as e:
        load_yaml("token: Hunter2Secret\nb: 2\ntoken: other\n", "f.yaml")
    assert "Hunter2Secret" not in str(e.value)


def test_a_yaml_1_1_directive_is_refused() -> None:
    with pytest.raises(YAMLFileError, match=r"declares YAML 1\.1; only YAML 1\.2 is read"):
        load_yaml("%YAML 1.1\n---\na: yes\n")
    assert load_yaml("%YAML 1.2\n---\na: yes\n") == {"a": "yes"}


def test_the_learning_configuration_refuses_a_repeated_key(tmp_path: Path) -> None:
    path = tmp_path / "learning.yaml"
    path.write_text("trends:\n  window_days: 7\ntrends:\n  window_days: 9\n")
    with pytest.raises(SettingsError, match="a key is given twice"):
        load_learning_config(path)


def test_the_topic_catalogue_refuses_a_repeated_key(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("defaults:\n  partitions: 3\ndefaults:\n  partitions: 6\n")
    with pytest.raises(TopicCatalogError, match="a key is given twice"):
        load_catalog(path)


def test_the_packaged_files_read_as_yaml_1_2() -> None:
    load_catalog(None)
    load_learning_config(None)


def test_a_policy_file_is_read_as_yaml_1_2_and_a_repeated_json_key_is_refused(
    tmp_path: Path,
) -> None:
    from learnops.cli.main import CliError
    from learnops.cli.policy import _load_artifact

    yaml_file = tmp_path / "policy.yaml"
    yaml_file.write_text("router:\n  fallback: NO\n  mode: 0755\nversion_label: '1.10'\n")
    assert _load_artifact(yaml_file) == {
        "router": {"fallback": "NO", "mode": 755},
        "version_label": "1.10",
    }
    json_file = tmp_path / "policy.json"
    json_file.write_text('{"prompt": "a", "tools": [], "prompt": "b"}')
    with pytest.raises(CliError, match="repeats a key at line 1 column") as caught:
        _load_artifact(json_file)
    assert '"b"' not in str(caught.value)
