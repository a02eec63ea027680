import pytest

from ground.errors import UsageError
from pipeline.config import Recipe, load_recipe
from pipeline.sized_epochs import sized_to


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


@pytest.mark.parametrize(
    "n_train, distill, finetune", [(1_293, 20, 2), (2_000, 20, 2), (8_000, 5, 1), (33_300, 4, 1)]
)
def test_distill_and_finetune_epochs_left_open_are_sized_to_the_training_split(
    n_train, distill, finetune
):
    r, chosen = sized_to(load_recipe(None), n_train)
    assert (r.distill.epochs, r.prune.finetune_epochs) == (distill, finetune)
    assert chosen == {"distill.epochs": distill, "prune.finetune_epochs": finetune}


def test_epochs_the_recipe_sets_are_kept_whatever_the_data():
    r, chosen = sized_to(
        load_recipe(None, {"distill.epochs": 30, "prune.finetune_epochs": 0}), 10**6
    )
    assert (r.distill.epochs, r.prune.finetune_epochs, chosen) == (30, 0, {})
