"""Stage keys at the pipeline level: change when they must, and only then."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import load_config
from flows.plan import stage_keys

EXAMPLE = Path(__file__).parents[2] / "examples" / "offline_default.yaml"


def keys(cfg) -> list[str]:
    return [k for _, k, _ in stage_keys(cfg)]


def test_example_file_is_the_builtin_default_and_dump_reload_is_stable():
    builtin = load_config()
    assert keys(load_config(EXAMPLE)) == keys(builtin)
    assert keys(load_config(doc=builtin.model_dump(mode="json"))) == keys(builtin)
    assert load_config(EXAMPLE).search == builtin.search


def test_int_float_spelling_and_yaml_formatting_do_not_change_keys(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("target_finetune: {epochs: 3, optimizer: {mode: adamw, lr: 1.0e-3}}\n")
    b = tmp_path / "b.yaml"
    b.write_text("target_finetune:\n  optimizer:\n    lr: 0.001\n    mode: adamw\n  epochs: 3.0\n")
    assert keys(load_config(a)) == keys(load_config(b))
    assert keys(load_config(a)) == keys(load_config(overrides=[
        "target_finetune.epochs=3", "target_finetune.optimizer.lr=1e-3"]))


@pytest.mark.parametrize("override, first_changed", [
    ("data_prep.max_length=30", 0),
    ("data_prep.intermediate.n_examples=100", 0),
    ("intermediate_finetune.enabled=false", 1),
    ("intermediate_finetune.optimizer.lr=0.002", 1),
    ("target_finetune.epochs=2", 2),
    ("target_finetune.optimizer.mode=hypergradient", 2),
    ("target_finetune.optimizer.weight_decay=0.1", 2),
    ("evaluate.batch_size=64", 3),
])
def test_a_change_rekeys_its_stage_and_everything_after_it(override, first_changed):
    base = keys(load_config())
    changed = keys(load_config(overrides=[override]))
    assert changed[:first_changed] == base[:first_changed]
    assert all(c != b for c, b in zip(changed[first_changed:], base[first_changed:], strict=True))


def test_runtime_settings_are_not_in_keys():
    assert keys(load_config(overrides=["device=cpu"])) == keys(load_config())
    assert keys(load_config(overrides=["search={}"])) == keys(load_config())


def test_data_file_contents_are_in_the_data_prep_key(tmp_path):
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    train.write_text("text,label\nthe cat,1\nthe dog,0\n")
    val.write_text("text,label\nthe hen,1\n")
    over = ["data_prep.target.source=csv",
            f"data_prep.target.data_files={{train: '{train}', validation: '{val}'}}"]
    before = keys(load_config(overrides=over))
    train.write_text("text,label\nthe cat,0\nthe dog,1\n")
    after = keys(load_config(overrides=over))
    assert all(a != b for a, b in zip(after, before, strict=True))


def _csv_config(folder: Path, train: str, validation: str) -> Path:
    cfg = folder / "cfg.yaml"
    cfg.write_text("data_prep:\n  target:\n    source: csv\n"
                   f"    data_files: {{train: {train}, validation: {validation}}}\n")
    return cfg


def _write_data(folder: Path, train: str = "text,label\na b,1\nc d,0\n") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text(train)
    (folder / "dev.csv").write_text("text,label\ne f,1\ng h,0\n")


def test_data_keys_follow_content_not_the_spelling_or_place_of_paths(tmp_path, monkeypatch):
    """Relative paths resolve against the config file's folder; the same files under
    another path, spelled absolute or relative, or listed in another order, give the
    same data_prep key; different content gives another."""
    a = tmp_path / "a"
    _write_data(a / "data")
    relative = keys(load_config(_csv_config(a, "data/train.csv", "data/dev.csv")))
    monkeypatch.chdir(tmp_path)  # not where the config is: still found next to it
    assert keys(load_config(_csv_config(a, "data/train.csv", "data/dev.csv"))) == relative
    absolute = _csv_config(a, str(a / "data" / "train.csv"), str(a / "data" / "dev.csv"))
    assert keys(load_config(absolute)) == relative
    b = tmp_path / "elsewhere" / "b"
    _write_data(b / "files")
    assert keys(load_config(_csv_config(b, "files/train.csv", "files/dev.csv"))) == relative
    swapped = b / "swapped.yaml"
    swapped.write_text("data_prep:\n  target:\n    source: csv\n    data_files:\n"
                       "      validation: files/dev.csv\n      train: files/train.csv\n")
    assert keys(load_config(swapped)) == relative
    c = tmp_path / "c"
    _write_data(c / "data", train="text,label\na b,0\nc d,1\n")  # other labels
    changed = keys(load_config(_csv_config(c, "data/train.csv", "data/dev.csv")))
    assert changed[0] != relative[0]
    roles = _csv_config(c, "data/dev.csv", "data/train.csv")  # train and dev swapped
    assert keys(load_config(roles))[0] not in (relative[0], changed[0])
