"""The topic catalogue and learning.yaml come from the package unless a setting names a file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.config import load_learning_config
from agents.settings import Settings, SettingsError, packaged
from agents.topics import TopicCatalogError, load_catalog
from tests.services import REPO


def test_unset_means_the_packaged_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEARNOPS_TOPICS_FILE", raising=False)
    monkeypatch.delenv("LEARNOPS_CONFIG_FILE", raising=False)
    settings = Settings()
    assert settings.learnops_topics_file is None
    assert settings.topics_source() == packaged("topics.yaml")
    assert settings.config_source() == packaged("learning.yaml")
    assert load_catalog(settings.learnops_topics_file) == load_catalog(packaged("topics.yaml"))
    assert load_learning_config(None) == load_learning_config(packaged("learning.yaml"))


def test_the_top_level_files_are_the_packaged_ones() -> None:
    # The design names topics.yaml at the top; it is a symlink to the package data.
    for top, name in (
        (REPO / "topics.yaml", "topics.yaml"),
        (REPO / "config" / "learning.yaml", "learning.yaml"),
    ):
        assert top.is_symlink(), top
        assert top.read_bytes() == packaged(name).read_bytes()


def test_a_named_file_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    topics = tmp_path / "topics.yaml"
    topics.write_text("topics:\n  only.one: {key: doer, value: X, partitions: 2}\n")
    monkeypatch.setenv("LEARNOPS_TOPICS_FILE", str(topics))
    settings = Settings()
    assert settings.topics_source() == topics
    assert list(load_catalog(settings.learnops_topics_file).topics) == ["only.one"]


def test_a_missing_named_file_names_its_variable(tmp_path: Path) -> None:
    with pytest.raises(TopicCatalogError, match=r"LEARNOPS_TOPICS_FILE: .*nope\.yaml does not"):
        load_catalog(tmp_path / "nope.yaml")
    with pytest.raises(SettingsError, match=r"LEARNOPS_CONFIG_FILE: .*nope\.yaml does not"):
        load_learning_config(tmp_path / "nope.yaml")


def test_settings_and_the_catalogue_import_no_kafka_client_nor_numerical_library() -> None:
    probe = (
        "import json, sys, agents.settings, agents.topics;print(json.dumps(sorted(sys.modules)))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    heavy = ("aiokafka", "faust", "numpy", "scipy", "datasketch", "learning", "storage")
    loaded = {m.split(".")[0] for m in json.loads(found.stdout)}
    assert loaded.isdisjoint(heavy), sorted(loaded & set(heavy))
