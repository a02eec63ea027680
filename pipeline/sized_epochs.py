"""Defaults sized to the data: the epochs a recipe leaves open (None), set from the size of the
training split once the data is loaded (pipeline/flow.py), before any stage key is made."""

from __future__ import annotations

import dataclasses

from pipeline.config import Recipe

# Distillation and fine-tuning start from trained weights, so what they need is optimizer steps,
# not passes: up to SMALL_DATA training images their default epochs hold (digits: 1,293); on a
# larger split each epoch is more steps and the default shrinks in proportion, to a floor.
SMALL_DATA = 2_000
SIZED_EPOCHS = {"distill.epochs": (20, 4), "prune.finetune_epochs": (2, 1)}  # (default, floor)


def sized_to(recipe: Recipe, n_train: int) -> tuple[Recipe, dict[str, int]]:
    """The recipe with the epochs it leaves open (None) set for n_train training images, and
    those it set: {key: epochs}."""
    share = min(1.0, SMALL_DATA / max(n_train, 1))
    chosen = {}
    for key, (default, floor) in SIZED_EPOCHS.items():
        section, name = key.split(".")
        part = getattr(recipe, section)
        if getattr(part, name) is None:
            chosen[key] = max(floor, round(default * share))
            part = dataclasses.replace(part, **{name: chosen[key]})
            recipe = dataclasses.replace(recipe, **{section: part})
    return recipe, chosen
