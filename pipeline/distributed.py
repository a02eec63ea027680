"""torch.distributed for the training stages (train, fine-tune, distill); everything else runs
on rank 0 alone.

slimship does not manage a cluster: `torchrun` (or `compress --nproc N`, which starts the same
elastic launcher on this machine) starts the processes and puts RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT in their environment; `init_from_env` joins that group. gloo on CPU, nccl when
CUDA is available. What goes where:

- training: `pipeline.train.fit` wraps the model in DistributedDataParallel and shards each
  epoch's order (see there);
- stage bookkeeping: `RunDir.stage` lets rank 0 alone decide reuse and write; the other ranks
  run the training bodies with it and then receive rank 0's files by broadcast (the state dict
  and the pruning plan), so they need no shared filesystem;
- after the training stages: `main_only` runs the rest on rank 0 while the others wait;
- decisions that must be the same everywhere (a pruning plan made inside a stage that also
  fine-tunes on every rank): `decide` computes them on rank 0 and broadcasts them.

Control messages (reuse decisions, files, the final wait) go over a separate gloo group with
a long timeout, so that nccl is used only for gradients and a rank that waits an hour for rank
0's exports is not timed out like a stuck all-reduce would be.

When `compress --nproc` launched the workers, each writes a small status file (its current
stage, its error if it has one) into a directory the launcher owns, so that the launcher can
turn a dead worker into one line naming the rank and the stage.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ground.errors import SlimshipError, UsageError
from ground.log import log

STATUS_ENV = "SLIMSHIP_STATUS_DIR"  # set by `launch` for its workers only
CORES_ENV = "SLIMSHIP_CORES"  # set by `launch`: the cores rank 0 may use once the others wait
TRAIN_TIMEOUT = timedelta(minutes=30)  # torch's default for a collective that hangs
WAIT_TIMEOUT = timedelta(hours=6)  # ranks waiting for rank 0's exports and profiling
RESUME = "finished stages are kept, run again to resume"

_control = None  # the gloo group for control messages
_solo = False  # True while rank 0 works alone (main_only, a rank-0-only stage): see solo()
_stage = "start-up"


class RankLost(SlimshipError):
    """A collective failed because another rank went away; that rank is the cause."""


def init_from_env() -> bool:
    """Join the process group the environment describes; False for a single process."""
    global _control
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=TRAIN_TIMEOUT)
    _control = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    _write_status()
    return True


def collective() -> bool:
    """True when the stage bookkeeping must talk to other ranks."""
    return dist.is_initialized() and dist.get_world_size() > 1 and not _solo


def active_world() -> int:
    """How many ranks take part in what this rank does now (1 inside rank-0-only work)."""
    return dist.get_world_size() if collective() else 1


@contextmanager
def solo():
    """Rank 0 alone: stages are bookkept and models trained as in a single process."""
    global _solo
    saved, _solo = _solo, True
    try:
        yield
    finally:
        _solo = saved


def rank() -> int:
    # before (or without) init, torchrun's RANK says who we are: log.py uses it to stay quiet
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """Where fit trains: this rank's GPU under nccl, else the CPU (the single-process default)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def wrap(model: nn.Module) -> nn.Module:
    """DistributedDataParallel around `model` when a group is up; the model itself otherwise.
    DDP copies rank 0's parameters and buffers to every rank here, so all start equal."""
    if not collective():
        return model
    dev = device()
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[dev.index] if dev.type == "cuda" else None
    )


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP broadcasts them
    before each forward, so after the last one each rank holds its own update."""
    if collective():
        for b in model.buffers():
            dist.broadcast(b, src=0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if collective():
        t = t.to(device())
        dist.all_reduce(t)
    return t.cpu()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (pickled: only ever our own dicts, lists and bytes)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def decide(fn):
    """fn() computed once, on rank 0, and its result handed to every rank: for decisions that
    must be identical everywhere, such as a pruning plan (importance scores computed on each
    rank's data could differ). Without a group, just fn()."""
    if not collective():
        return fn()
    return broadcast_object(fn() if is_main() else None)


def gather_object(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_control)
    return out


def barrier() -> None:
    dist.barrier(group=_control)


def main_only(fn, what: str):
    """Run fn on rank 0 (its stages bookkept as in a single process) while the other ranks wait
    at a barrier; they get None. Without a group, just fn()."""
    if not collective():
        return fn()
    if not is_main():
        set_stage(f"waiting for rank 0 ({what})")
        with lost_rank_is_an_error(f"the wait for rank 0 ({what})"):
            barrier()
        return None
    if os.environ.get(CORES_ENV):  # `launch` gave each worker cores/nproc threads
        torch.set_num_threads(int(os.environ[CORES_ENV]))
    try:
        with solo():
            return fn()
    finally:
        # reached on an error too: the others then exit 0 and rank 0's own error is the one
        # the launcher reports
        barrier()


def set_stage(name: str) -> None:
    global _stage
    _stage = name
    _write_status()


def is_rank_loss(e: BaseException) -> bool:
    """A collective that failed because a peer went away (gloo: connection closed/reset)."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text
        for s in (
            "Connection closed by peer",
            "Connection reset by peer",
            "gloo/transport",
            "NCCL communicator was aborted",
            "Broken pipe",
        )
    )


@contextmanager
def lost_rank_is_an_error(where: str):
    try:
        yield
    except Exception as e:
        if isinstance(e, SlimshipError) or not is_rank_loss(e):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        # gloo's "[.../pair.cc:537] Read error [127.0.0.1]:909: Connection reset by peer. This
        # is typically caused by ...": keep what happened
        first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". This is typically")[0]
        raise RankLost(
            f"lost contact with another rank during {where} ({first[:160]}); "
            f"the launcher's report names the rank that failed; {RESUME}"
        ) from None


def fail(message: str, code: int, lost_rank: bool = False) -> None:
    """Print a worker's one-line error and exit. Under `launch`, only rank 0 prints: the
    launcher prints another rank's error itself, and a lost rank is named by the launcher."""
    status = os.environ.get(STATUS_ENV)
    if status:
        _write_status(error=message, exit_code=code, lost_rank=lost_rank)
    r = rank()
    if not status or (r == 0 and not lost_rank):
        print(f"error: {'' if r == 0 else f'rank {r}: '}{message}", file=sys.stderr, flush=True)
    sys.exit(code)


def record_exit(code: int, why: str) -> None:
    """A worker that exits non-zero having printed its reason (e.g. the report's problems)."""
    if os.environ.get(STATUS_ENV):
        _write_status(error=why, exit_code=code)


def _write_status(**extra) -> None:
    folder = os.environ.get(STATUS_ENV)
    if not folder:
        return
    path = Path(folder) / f"rank{rank()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stage": _stage, **extra}))
    os.replace(tmp, path)  # the launcher may read it at any moment


# ---- the launcher: `compress --nproc N` on one machine ------------------------------------


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python argv...` in nproc workers through torch's elastic launcher (what torchrun
    uses) and return the exit code; a worker that died becomes one SlimshipError naming it."""
    if os.environ.get("WORLD_SIZE"):
        raise UsageError(
            "--nproc: already running under torchrun (WORLD_SIZE is set); "
            "leave --nproc at 1 and let torchrun start the workers"
        )
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cores = len(os.sched_getaffinity(0))
    env = {}
    if not os.environ.get("OMP_NUM_THREADS"):  # else the user's choice stands, as in torchrun
        env = {"OMP_NUM_THREADS": str(max(1, cores // nproc)), CORES_ENV: str(cores)}
    threads = env.get("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS"))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
    )
    log(
        f"starting {nproc} training processes on this machine (torch.distributed elastic "
        f"launcher, {'nccl' if torch.cuda.is_available() else 'gloo'}, {threads} thread(s) each)"
    )
    _quiet_launcher_logs()
    with (
        tempfile.TemporaryDirectory(prefix="slimship-ranks-") as status,
        _environ({**env, STATUS_ENV: status}),
    ):
        try:
            elastic_launch(config, sys.executable)(*argv)
        except ChildFailedError as e:
            return explain_failure(e.failures, _read_status(Path(status)))
        except SignalException as e:  # Ctrl-C or a kill of this launcher: workers are stopped
            raise SlimshipError(f"interrupted ({_signal_name(e.sigval)}); {RESUME}") from None
    return 0


def explain_failure(failures: dict, status: dict[int, dict]) -> int:
    """The exit code for a failed launch; raises SlimshipError when a rank died or crashed.

    failures: global rank -> torch's ProcessFailure (exitcode < 0 for a signal);
    status: global rank -> what that worker last wrote (stage; error if it had one)."""
    own = {r: s for r, s in status.items() if s.get("error") and not s.get("lost_rank")}
    died = [r for r, f in failures.items() if f.exitcode < 0 and r not in own]
    # the launcher sends SIGTERM to the survivors of a failure: they are not the cause
    died.sort(key=lambda r: (failures[r].exitcode == -signal.SIGTERM, r))
    if died:
        r = died[0]
        raise SlimshipError(
            f"rank {r} died (signal {_signal_name(-failures[r].exitcode)}) "
            f"during {status.get(r, {}).get('stage', 'start-up')}; {RESUME}"
        )
    if own:  # a worker's own error: rank 0 printed its own; another rank's is printed here
        r = 0 if 0 in own else min(own)
        if r != 0:
            print(f"error: rank {r}: {own[r]['error']}", file=sys.stderr, flush=True)
        return int(own[r].get("exit_code", 1))
    r = min(failures)
    raise SlimshipError(
        f"rank {r} failed (exit code {failures[r].exitcode}) during "
        f"{status.get(r, {}).get('stage', 'start-up')}; its output above says why; "
        f"{RESUME}"
    )


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def _read_status(folder: Path) -> dict[int, dict]:
    out = {}
    for p in folder.glob("rank*.json"):
        try:
            out[int(p.stem[4:])] = json.loads(p.read_text())
        except (ValueError, OSError):
            continue  # half-written by a rank that died: its failure is still reported
    return out


def _quiet_launcher_logs() -> None:
    """The elastic agent logs each failure and SIGTERM it sends; explain_failure says the same
    in one line, so only its critical messages stay."""
    import logging

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


@contextmanager
def _environ(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
