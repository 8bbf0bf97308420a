"""Configuration: `semiseg config` prints every preset resolved, in one document that loads back
unchanged, and YAML that gives a key twice is refused, naming the key. Settings are checked against
the shipped presets: unknown keys, and values of the wrong kind, are one-line errors naming where
they came from; numbers typed as text become numbers."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from semiseg.cli import app
from semiseg.config import builtin_text, load_config, load_yaml, preset_names
from semiseg.errors import SemisegInputError
from semiseg.methods.base import get_method
from test_cli import assert_one_line_error, semiseg

KINDS = ["ddpm", "supervised", "ddpm-pixel", "ddpm-finetune", "mean-teacher", "embedmatch"]


def files_of(kind: str) -> list[str]:
    return ["ddpm"] if kind == "ddpm" else get_method(kind).config_files


@pytest.mark.parametrize("kind", KINDS)
def test_printed_presets_load_back_unchanged(kind: str, tmp_path: Path):
    result = CliRunner().invoke(app, ["config", kind])
    assert result.exit_code == 0, result.output
    printed = load_yaml(result.output, "printout")  # one document, no key twice
    files = files_of(kind)
    assert list(printed) == preset_names(files) and len(printed) >= 2
    saved = tmp_path / "my.yaml"
    saved.write_text(result.output)
    for preset in printed:
        assert load_config(files, preset, saved) == load_config(files, preset) == printed[preset]


def test_an_edit_to_the_printout_is_kept(tmp_path: Path):
    """The issue's case: `semiseg config supervised > my.yaml`, edit, `--config my.yaml`."""
    text = CliRunner().invoke(app, ["config", "supervised"]).output
    assert text.count("\ndefault:") == 1  # the old printout held segmentation.yaml's and supervised.yaml's
    edited = tmp_path / "my.yaml"
    edited.write_text(text.replace("    steps: 4000", "    steps: 1234", 1))
    assert load_config(files_of("supervised"), "default", edited)["train"]["steps"] == 1234
    small = CliRunner().invoke(app, ["config", "supervised", "--preset", "small"]).output
    edited.write_text(small)
    assert list(load_yaml(small, "x")) == ["small"]
    assert load_config(files_of("supervised"), "small", edited) == load_config(files_of("supervised"), "small")
    with pytest.raises(SemisegInputError, match="holds the presets small but not 'default'; choose one with --preset"):
        load_config(files_of("supervised"), "default", edited)


def test_printout_keeps_the_shipped_comments():
    text = CliRunner().invoke(app, ["config", "embedmatch"]).output
    assert "# MC dropout passes (UA-MT: 8)" in text and "# 3D only" in text  # the method's file and the shared one


def test_shipped_presets_give_no_key_twice():
    for name in ("ddpm", "segmentation", "supervised", "ddpm_pixel", "ddpm_finetune", "mean_teacher", "embedmatch"):
        load_yaml(builtin_text(name), name)


def test_a_key_given_twice_is_an_error_naming_it(tmp_path: Path):
    with pytest.raises(SemisegInputError, match=r"x\.yaml: key 'steps' appears twice \(lines 3 and 4\)"):
        load_yaml("train:\n  lr: 1\n  steps: 5\n  steps: 6\n", "x.yaml")
    assert load_yaml("base: &b {a: 1, b: 2}\nother:\n  <<: *b\n  a: 3\n", "x") == {"base": {"a": 1, "b": 2}, "other": {"a": 3, "b": 2}}
    with pytest.raises(SemisegInputError, match="key 'default' appears twice"):
        load_yaml("default: {}\ndefault: {}\n", "x")


def test_duplicate_keys_through_the_cli(tmp_path: Path, tiny_cache: Path):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("default:\n  train:\n    steps: 3\n  train:\n    lr: 0.1\n")
    r = semiseg("train", str(tiny_cache), "--method", "supervised", "--labelled", "2", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "my.yaml: key 'train' appears twice (lines 2 and 4)")
    study = tmp_path / "study.yaml"
    study.write_text(f"out: s\ncache: {tiny_cache}\nmethods: [supervised]\nbudgets: [2]\nbudgets: [3]\n")
    assert_one_line_error(semiseg("sweep", str(study)), "study.yaml: key 'budgets' appears twice (lines 4 and 5)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.yaml", "study.yaml"]


FILES = ["segmentation", "supervised"]


@pytest.mark.parametrize("item,message", [
    ("train.steps=abc", "'train.steps' must be an integer, got 'abc'"),
    ("train.steps=2.5", "'train.steps' must be an integer"),
    ("train.lr=fast", "'train.lr' must be a number, got 'fast'"),
    ("train=5", "'train' must be a mapping of settings, got 5"),
    ("network.features=[a,b]", "'network.features' must be a list of integers"),
    ("augment.flip=3", "'augment.flip' must be true or false"),
    ("loss.class_weights=heavy", "'loss.class_weights' must be"),
    ("train.steps=null", "'train.steps' must be an integer, got None"),
    ("train.stepz=3", "unknown setting 'train.stepz'"),
])
def test_wrong_kind_is_an_error_naming_the_key(item: str, message: str):
    with pytest.raises(SemisegInputError, match=f"^--set: .*{message.replace('[', '.').replace(']', '.')}"):
        load_config(FILES, "small", overrides=[item])


def test_accepted_values():
    cfg = load_config(FILES, "small", overrides=["train.lr=1e-3", "train.grad_clip=null", "loss.class_weights=[1, 2.5]", "train.weight_decay=0"])
    assert cfg["train"]["lr"] == 0.001 and cfg["train"]["grad_clip"] is None and cfg["loss"]["class_weights"] == [1, 2.5]
    assert load_config(["segmentation", "mean_teacher"], "small", overrides=["unlabelled_batch_size=4"])["unlabelled_batch_size"] == 4


def test_source_is_named():
    with pytest.raises(SemisegInputError, match="^study.yaml, settings of supervised: unknown setting 'x'"):
        load_config(FILES, "small", overrides=["x=1"], overrides_source="study.yaml, settings of supervised")


def test_user_file_is_checked(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  steps: many\n")
    with pytest.raises(SemisegInputError, match=r"mine\.yaml: setting 'train.steps' must be an integer, got 'many'"):
        load_config(FILES, "small", user_file=path)
