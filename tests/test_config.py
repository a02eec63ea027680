import pytest

from ground.errors import UsageError
from pipeline.config import Recipe, load_recipe


def write(tmp_path, text):
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def test_defaults_and_file_and_overrides(tmp_path):
    assert load_recipe(None) == Recipe()
    r = load_recipe(
        write(tmp_path, "train: {epochs: 3}\ndistill: {temperature: 2}\n"),
        {"distill.alpha": 0.5, "train.lr": None},
    )
    assert r.train.epochs == 3 and r.distill.temperature == 2.0 and r.distill.alpha == 0.5


@pytest.mark.parametrize(
    "text, key",
    [
        ("train: {epochz: 3}", "train.epochz"),
        ("trian: {}", "trian"),
        ("train: {epochs: three}", "train.epochs"),
        ("distill: {temperature: 0}", "distill.temperature"),
        ("distill: {alpha: 1.5}", "distill.alpha"),
        ("prune: {importance: obdc}", "prune.importance"),
        ("prune: {macs_fraction: 0}", "prune.macs_fraction"),
        ("train: 5", "train"),
        ("[1, 2]", "mapping"),
        ("train: {epochs: [1", "YAML"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, text, key):
    with pytest.raises(UsageError, match=key.replace(".", r"\.")):
        load_recipe(write(tmp_path, text))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_recipe(tmp_path / "nope.yaml")
