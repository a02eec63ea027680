"""Run by tests/test_distributed.py under torchrun with 2 gloo ranks: what each rank holds
after each training-stage step, as sha256 digests of its state dict, written by rank 0 to
OUT/digests.json (one list per step, one digest per rank).

The ranks start from different random weights on purpose: DDP must make them equal."""

import hashlib
import json
import sys
from pathlib import Path

import torch

from models import create_model, example_input
from pipeline import distributed
from pipeline.checkpoint import load_model, save_model
from pipeline.config import PruneConfig
from pipeline.data import load_dataset
from pipeline.prune import apply_plan, prune_with_config
from pipeline.rundir import RunDir
from pipeline.train import fit


def digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out: Path) -> None:
    assert distributed.init_from_env(), "run me under torchrun"
    rank, seen, kept = distributed.rank(), {}, {}
    data = load_dataset("digits")
    spec = {
        "name": "small_cnn",
        "in_channels": 1,
        "num_classes": 10,
        "input_size": 8,
        "input_shape": [1, 8, 8],
    }
    run, example = RunDir(out / "run"), example_input(spec)
    fit_args = {"epochs": 1, "batch_size": 64, "lr": 0.003, "seed": 0}

    def train(folder):
        torch.manual_seed(100 + rank)  # different on each rank
        model = create_model("small_cnn", 1, 10, 8)
        seen["initial"] = digest(model)
        fit(model, data.x_train, data.y_train, **fit_args)
        seen["trained"] = digest(model)
        kept["teacher"] = model  # this rank's own result, not rank 0's broadcast files
        save_model(folder, model, spec)
        return {}

    teacher = run.stage("train", {"t": 1}, train, all_ranks=True)

    def prune(folder):  # rank 0 alone; the others receive its files
        model, _, _ = load_model(teacher.dir)
        res = prune_with_config(model, example, PruneConfig(), round_to=8)
        save_model(folder, res.model, spec, res.plan)
        return {}

    pruned = run.stage("prune", {"inputs": [teacher.digest]}, prune)
    student, _, plan = load_model(pruned.dir)
    seen["pruned (stage result)"] = digest(student)
    # the plan decided once on rank 0, replayed by every rank on its own copy of the teacher
    plan = distributed.decide(lambda: plan)
    seen["pruned (plan replayed on this rank)"] = digest(apply_plan(kept["teacher"], plan, example))

    def finetune(folder):
        model, _, _ = load_model(pruned.dir)
        fit(model, data.x_train, data.y_train, **fit_args)
        seen["fine-tuned one epoch"] = digest(model)  # before any broadcast of rank 0's files
        save_model(folder, model, spec, plan)
        return {}

    run.stage("finetune", {"inputs": [pruned.digest]}, finetune, all_ranks=True)
    every = distributed.gather_object(seen)
    if rank == 0:
        (out / "digests.json").write_text(
            json.dumps({step: [s[step] for s in every] for step in seen}, indent=1)
        )
    distributed.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
