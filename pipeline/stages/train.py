"""train: the dense teacher, trained on the training split or loaded from --weights."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ground.errors import UsageError
from ground.log import log
from models import create_from_spec, load_state
from pipeline.checkpoint import check_finite, save_model, save_weights
from pipeline.regularize import SparsityTraining
from pipeline.rundir import StageResult, sha256_file
from pipeline.stages._job import Job
from pipeline.train import cross_entropy, fit

NAME = "train"
REWIND_FILES = ("init.safetensors", "rewind.safetensors")  # in this stage's folder


def key(job: Job, weights: Path | None, loaded) -> dict:
    given = None
    if weights is not None:
        given = {
            "path": str(weights),
            "sha256": sha256_file(Path(weights)),
            "loaded_with": loaded[1],
        }
    return {
        "config": {
            **asdict(job.recipe.train),
            "spec": job.spec,
            "seed": job.seed,
            "weights": given,
            # epoch k > 0: the weights after epoch k are kept for lottery-ticket rewinding
            "rewind_snapshot": job.recipe.prune.rewind_epoch or None,
        },
        "data": job.fingerprint,
        **job.augment_key(),
    }


def run(job: Job, weights: Path | None = None, loaded=None) -> StageResult:
    """Every rank of a distributed run trains (DDP); `loaded` is (state dict, how) of --weights."""
    return job.run.stage(
        NAME, key(job, weights, loaded), lambda d: _teacher(job, d, weights, loaded), all_ranks=True
    )


def _teacher(job: Job, folder: Path, weights: Path | None, loaded) -> dict:
    torch.manual_seed(job.seed)
    model = create_from_spec(job.spec).train()
    if weights is not None:
        extra = _load(model, job.spec["name"], weights, loaded)
    else:
        extra = _train(job, folder, model)
    save_model(folder, model, job.spec)
    info = {**job.figures(model, "teacher"), **extra}
    log(f"[train] teacher accuracy {info['accuracy']['value']:.2%}")
    return info


def _load(model, name: str, weights: Path, loaded) -> dict:
    state, how = loaded
    try:
        load_state(model, state)
    except RuntimeError as e:
        raise UsageError(
            f"--weights {weights}: does not fit --model {name}: {str(e).splitlines()[0]}"
        ) from None
    log(f"[train] loaded the teacher from {weights} ({how}); no training")
    check_finite(model, f"--weights {weights}")
    return {"weights_loaded_with": how, "trusted_pickle": "trust-pickle" in how}


def _train(job: Job, folder: Path, model) -> dict:
    cfg = job.recipe.train
    log(f"[train] {job.spec['name']} on {job.data.name}: {cfg.epochs} epochs")
    # the initial weights (and, for rewinding to epoch k, the weights after epoch k) are what a
    # lottery ticket is rewound to (Frankle & Carbin)
    save_weights(folder / REWIND_FILES[0], model)
    k = job.recipe.prune.rewind_epoch  # <= train.epochs (Recipe.check)

    def snapshot(epoch, m):
        if epoch == k:
            save_weights(folder / REWIND_FILES[1], m)

    sparse = SparsityTraining(model, job.example, cfg, job.seed)
    try:
        loss = fit(
            model,
            job.data.x_train,
            job.data.y_train,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            seed=job.seed,
            desc="train teacher",
            on_epoch=snapshot if k else None,
            loss_fn=sparse.wrap(cross_entropy),
            augment=job.augment,
        )
    finally:
        sparse.close()
    check_finite(model, "train")
    return {"final_loss": loss[-1], "sparsity_training": sparse.describe()}
