"""The run directory: one folder per stage, a manifest of every file with its sha256, and
stage reuse keyed by (stage, config, input digests, library versions).

    runs/<name>/manifest.json
    runs/<name>/<stage>/...      files the stage wrote, all through atomic writes
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ground.errors import SlimshipError
from ground.log import log
from pipeline import distributed

MANIFEST = "manifest.json"
_LIBS = ("torch", "torch-pruning")  # and every backend's own libraries


def library_versions() -> dict[str, str]:
    from targets import get_backend, list_backends

    out = {}
    for lib in _LIBS + tuple(lib for b in list_backends() for lib in get_backend(b).libraries):
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory (e.g. .mlpackage) as its sorted (path, sha256) list."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    return sha256_json([(str(p.relative_to(path)), sha256_file(p)) for p in list_files(path)])


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def umask_mode(directory: bool = False) -> int:
    """The mode open()/mkdir() would give a new file (0o666) or directory (0o777) under the
    process umask; mkstemp/mkdtemp create 0o600/0o700, which would leave a bundle unreadable
    to the app team's other users and CI jobs."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextmanager
def atomic_path(path: Path):
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def file_record(path: Path, root: Path) -> dict:
    return {
        "path": str(path.relative_to(root)),
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
    }


def list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _well_formed(entry) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("key"), str)
        and isinstance(entry.get("info"), dict)
        and isinstance(entry.get("digest"), str)
        and isinstance(entry.get("files"), list)
        and all(
            isinstance(f, dict)
            and isinstance(f.get("path"), str)
            and isinstance(f.get("sha256"), str)
            and isinstance(f.get("bytes"), int)
            for f in entry["files"]
        )
    )


@dataclass
class StageResult:
    name: str
    dir: Path
    info: dict
    digest: str  # hash over the stage's file hashes: the next stage's key includes it
    reused: bool


class RunDir:
    """Under torch.distributed, rank 0 owns the run directory; every other rank keeps a private
    mirror in a temporary folder, filled only with what rank 0 broadcasts after each stage."""

    def __init__(self, root: Path):
        if distributed.collective() and not distributed.is_main():
            # under `compress --nproc` inside the launcher's folder, which it removes even
            # when this rank is killed
            self.root = Path(
                tempfile.mkdtemp(
                    prefix=f"slimship-rank{distributed.rank()}-",
                    dir=os.environ.get(distributed.STATUS_ENV),
                )
            )
            atexit.register(shutil.rmtree, self.root, ignore_errors=True)
            self.manifest = {"stages": {}}  # never read: rank 0 decides
            return
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest = self._read_manifest()

    def _read_manifest(self) -> dict:
        p = self.root / MANIFEST
        if not p.exists():
            return {"stages": {}}
        try:
            data = json.loads(p.read_text())
            if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
                raise ValueError("no stages mapping")  # noqa: TRY004  (handled just below)
            # keep only well-formed entries: anything else is rebuilt, never trusted
            data["stages"] = {k: v for k, v in data["stages"].items() if _well_formed(v)}
            return data
        except (ValueError, UnicodeDecodeError):
            log(f"run manifest {p} is unreadable; every stage will run again")
            return {"stages": {}}

    def _valid(self, entry: dict) -> bool:
        """Every recorded file still exists, inside the run directory, with its sha256."""
        for rec in entry.get("files", []):
            p = (self.root / rec["path"]).resolve()
            if self.root.resolve() not in p.parents or not p.is_file() or p.is_symlink():
                return False
            if p.stat().st_size != rec["bytes"] or sha256_file(p) != rec["sha256"]:
                return False
        return True

    def stage(
        self, name: str, key_parts: dict, fn: Callable[[Path], dict], *, all_ranks: bool = False
    ) -> StageResult:
        """Run `fn(stage_dir) -> info` unless a finished stage with the same key is on disk.

        Under torch.distributed, rank 0 decides reuse and records the stage. With all_ranks
        (the training stages) every rank runs fn, so the collectives of DDP inside it meet;
        otherwise rank 0 runs it alone while the others wait. Either way the others then
        receive rank 0's files (state dict, pruning plan) and info by broadcast.
        """
        key = sha256_json({"stage": name, "versions": library_versions(), **key_parts})
        distributed.set_stage(name)
        if not distributed.collective():
            entry = self._reusable(name, key)
            return self._reused(name, entry) if entry else self._run(name, key, key_parts, fn)
        with distributed.lost_rank_is_an_error(name):
            return self._stage_on_ranks(name, key, key_parts, fn, all_ranks)

    def _reusable(self, name: str, key: str) -> dict | None:
        entry = self.manifest["stages"].get(name)
        if entry and entry.get("key") == key:
            if self._valid(entry):
                log(f"[{name}] reused: inputs and config unchanged (key {key[:12]})")
                return entry
            log(f"[{name}] finished files are missing or changed on disk; running it again")
        return None

    def _reused(self, name: str, entry: dict) -> StageResult:
        return StageResult(name, self.root / name, entry["info"], entry["digest"], True)

    def _fresh(self, name: str) -> Path:
        folder = self.root / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def _run(self, name: str, key: str, key_parts: dict, fn) -> StageResult:
        folder = self._fresh(name)
        start = time.perf_counter()
        info = fn(folder)
        files = [file_record(p, self.root) for p in list_files(folder)]
        digest = sha256_json([(f["path"], f["sha256"]) for f in files])
        self.manifest["stages"][name] = {
            "key": key,
            "digest": digest,
            "config": key_parts.get("config"),
            "files": files,
            "info": info,
            "seconds": round(time.perf_counter() - start, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json(self.root / MANIFEST, self.manifest)
        return StageResult(name, folder, info, digest, False)

    def _stage_on_ranks(self, name, key, key_parts, fn, all_ranks) -> StageResult:
        keys = distributed.gather_object(key)
        decision = None
        if distributed.is_main():
            # every rank must have computed the same key: other data or library versions on
            # another node would otherwise train on different inputs without a word
            differ = [r for r, k in enumerate(keys) if k != key]
            entry = None if differ else self._reusable(name, key)
            decision = {"differ": differ, "reuse": entry is not None}
        decision = distributed.broadcast_object(decision)
        if decision["differ"]:
            raise SlimshipError(
                f"{name}: rank(s) {', '.join(map(str, decision['differ']))} have "
                "other inputs than rank 0 (data, recipe or library versions); "
                "every rank must see the same"
            )
        if distributed.is_main():
            if decision["reuse"]:
                result = self._reused(name, self.manifest["stages"][name])
            elif all_ranks:
                result = self._run(name, key, key_parts, fn)
            else:
                with distributed.solo():  # a fit() inside trains on rank 0 alone
                    result = self._run(name, key, key_parts, fn)
            files = [
                (str(p.relative_to(result.dir)), p.read_bytes()) for p in list_files(result.dir)
            ]
            distributed.broadcast_object((result.info, result.digest, files))
            return result
        if all_ranks and not decision["reuse"]:
            fn(self._fresh(name))  # this rank's share of training; rank 0's files replace its own
        info, digest, files = distributed.broadcast_object(None)
        folder = self._fresh(name)
        for rel, data in files:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        return StageResult(name, folder, info, digest, decision["reuse"])
