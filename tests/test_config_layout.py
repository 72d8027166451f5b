"""The config layer: a neutral base, data-set recipes, and method configs that never import each other
or start from the demo data's settings (issue 12)."""

import ast
import importlib
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contrastive_jax.train import defaults  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train import recipes  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG_FILES = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py")


def _variants(path):
  return importlib.import_module(f"configs.{path.stem}").VARIANTS


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_configs_do_not_import_each_other(path):
  for node in ast.walk(ast.parse(path.read_text())):
    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
             [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
    assert not any(n == "configs" or n.startswith("configs.") for n in names), (path.name, names)


def test_neutral_base_leaves_the_data_set_fields_unset():
  base = defaults.run_config()
  for path in defaults.REQUIRED_FIELDS:
    section, _, name = path.rpartition(".")
    assert (base[section] if section else base)[name] is None, path
  for variant in recipes.BUNDLED_VARIANTS:
    config = defaults.base_config(variant)
    assert config.data.name == variant and config.model.encoder and config.optim.lr > 0


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_paper_variants_never_start_from_the_demo_recipe(path, monkeypatch):
  """Building a variant that is not bundled data never calls the bundled-data recipe: paper
  configs start from the neutral base, so there is no demo default for them to undo."""
  module = importlib.import_module(f"configs.{path.stem}")

  def refuse(*args, **kwargs):
    raise AssertionError("a paper variant applied the bundled-data recipe")

  monkeypatch.setattr(recipes, "bundled", refuse)
  for variant in module.VARIANTS:
    if variant not in recipes.BUNDLED_VARIANTS:
      config = module.get_config(variant)
      assert config is not None


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_variant_sets_the_required_fields(path):
  module = importlib.import_module(f"configs.{path.stem}")
  for variant in module.VARIANTS:
    config = module.get_config(variant)
    if "data" not in config or "encoder" not in config.get("model", {}):
      continue  # the jigsaw / CoWPro configs have their own schema
    for field in defaults.REQUIRED_FIELDS:
      section, _, name = field.rpartition(".")
      assert (config[section] if section else config)[name] is not None, (variant, field)


def test_an_unset_required_field_is_one_clear_error():
  from contrastive_jax.train import loop  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  config = defaults.run_config()
  config.batch_size, config.num_train_steps, config.data.name = 8, 10, "digits_angle"
  with pytest.raises(ValueError, match=r"`model.encoder` \(the backbone\), `optim.lr`.*recipes"):
    loop.check_config_fields(config)
  loop.check_config_fields(defaults.base_config("diabetes"))
