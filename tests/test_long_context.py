"""Long-context fine-tuning: RoPE and length keys reach the model, repository-level sequences."""

from __future__ import annotations

from pathlib import Path

from qlcode.data import build
from qlcode.data.repository import import_order, repository_dataset
from qlcode.models import load_recipe_base
from qlcode.recipe import load_recipe
from qlcode.train import build_trainer

from conftest import REPO


def _repo(root: Path) -> Path:
    pkg = root / "proj" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.b import B\n")
    (pkg / "a.py").write_text("from .c import C\n\nclass A(C):\n    pass\n")
    (pkg / "b.py").write_text("from pkg import a\n\nclass B(a.A):\n    pass\n")
    (pkg / "c.py").write_text("class C:\n    x = 1\n")
    (root / "other" / "m.py").parent.mkdir()
    (root / "other" / "m.py").write_text("print('other')\n")
    return root


def test_files_come_after_the_files_they_import(tmp_path):
    root = _repo(tmp_path)
    assert [p.name for p in import_order(root / "proj" / "pkg")] == ["c.py", "a.py", "b.py", "__init__.py"]
    assert [p.name for p in import_order(root / "proj")] == ["c.py", "a.py", "b.py", "__init__.py"]
    rows = repository_dataset(str(root), "data.datasets[0]")
    assert rows["text"][0] == "# file: other/m.py\nprint('other')\n\n"
    text = rows["text"][1]
    assert text.startswith("# file: proj/pkg/c.py\nclass C:") and text.index("pkg/a.py") < text.index("pkg/b.py")


def test_long_context_recipe_reaches_the_model_config(tmp_path, tiny_base):
    recipe = load_recipe(REPO / "recipes" / "long-context.yaml", [f"model.base={tiny_base}"])
    cfg = load_recipe_base(recipe).config
    assert cfg.rope_parameters["rope_theta"] == 1e6 and cfg.max_position_embeddings == 16384
    assert recipe.data.max_length == 16384 and recipe.data.packing


def test_repository_sequences_are_split_not_truncated(tmp_path, tiny_base):
    root = _repo(tmp_path)
    recipe = load_recipe(REPO / "recipes" / "long-context.yaml", [
        f"model.base={tiny_base}", f"data.datasets.0.source={root}", "data.max_length=16",
        f"output.dir={tmp_path / 'run'}", "train.max_steps=2", "train.gradient_checkpointing=false"])
    train_rows, _ = build(recipe.data)
    trainer, _ = build_trainer(recipe)
    tok = trainer.processing_class
    total = sum(len(tok(r["text"])["input_ids"]) + 1 for r in train_rows)  # + eos
    packed = trainer.train_dataset
    assert all(len(r["input_ids"]) <= 16 for r in packed)
    assert sum(len(r["input_ids"]) for r in packed) == total  # every token kept
    assert trainer.train().global_step == 2
