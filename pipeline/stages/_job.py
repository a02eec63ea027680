"""What every stage reads: the run directory, the data, the recipe, the model spec, the seed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from models import example_input
from pipeline import augment, confidence
from pipeline.augment import Augment
from pipeline.config import Recipe
from pipeline.data import Dataset
from pipeline.prune import count
from pipeline.report import counted, measured
from pipeline.rundir import RunDir
from pipeline.train import accuracy, predict


@dataclass
class Job:
    run: RunDir
    data: Dataset
    recipe: Recipe
    spec: dict  # name, in_channels, num_classes, input_size, input_shape of the teacher
    seed: int
    example: torch.Tensor = field(init=False)
    fingerprint: str = field(init=False)  # the data's digest, hashed once for every key
    augment: Augment | None = field(init=False)  # for training batches only

    def __post_init__(self):
        self.example = example_input(self.spec)
        self.fingerprint = self.data.fingerprint()
        self.augment = augment.for_training(self.recipe.augment, self.data.preprocessing)

    def augment_key(self) -> dict:
        """The augmentation, for the keys of stages that train; {} when off, so that runs
        without it keep the keys they had before it existed."""
        a = self.recipe.augment
        return {"augment": dataclasses.asdict(a)} if a.enabled else {}

    def figures(self, model, what: str) -> dict:
        """Accuracy, confidence calibration, MACs and parameters of a PyTorch model."""
        d = self.data
        macs, params = count(model, self.example)
        logits = predict(model, d.x_test)
        on = f"{what}, PyTorch fp32, {len(d.y_test)} test images"
        m = confidence.metrics(logits, d.y_test, self.recipe.calibrate.bins)
        return {
            "reliability_data": m,  # raw bins for the diagram; the figures are in "calibration"
            "accuracy": measured(accuracy(logits, d.y_test), "top1", on),
            "calibration": confidence.figures(m, on),
            "macs": counted(macs, "MAC", f"{what}, one {tuple(self.example.shape)} input"),
            "params": counted(params, "parameters", what),
        }


def per_backend(stage: str, b, choice) -> str:
    """A per-backend stage's folder, e.g. export/tflite-int8."""
    return f"{stage}/{b.name}-{choice.precision}"


def sparsity_figures(info: dict, what: str) -> dict:
    on = f"conv and linear weights of the {what}"
    return {
        "sparsity": counted(info["sparsity"], "fraction of weights that are zero", on),
        "zeros": counted(info["zeros"], "weights", on),
        "weights": counted(info["weights"], "weights", on),
    }
