"""An emulated arm64 Linux machine that runs bundle files through aarch64 builds of their
runtimes (issue 11).

A Debian root made by debootstrap, entered with chroot, its aarch64 programs run by qemu-user
through binfmt_misc; the runtimes' aarch64 wheels are installed into it from the host, at the
host's versions, without running pip under emulation. It is prepared once into a cache folder
(`~/.cache/slimship/arm64-root`, or $SLIMSHIP_ARM64_CACHE, or --cache) and reused while the
host's runtime versions stay the same. What it changes on the host (the binfmt_misc mount and
its qemu-aarch64 entry, /proc inside the root) is undone on every exit path, Ctrl-C and SIGTERM
included. docs/ARM64.md says what a run here proves (loading, ARM kernels, numerics) and what it
does not (speed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from ground.errors import SlimshipError, UsageError
from ground.log import log

CACHE_ENV = "SLIMSHIP_ARM64_CACHE"
MIRROR_ENV = "SLIMSHIP_ARM64_MIRROR"
DEFAULT_CACHE = "~/.cache/slimship/arm64-root"
DEFAULT_CPU = "cortex-a76"  # the big core of most phones sold since 2019: NEON, fp16, dot product
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# bookworm's python3 is 3.11, the CPython the aarch64 wheels below are chosen for
BASE = {"suite": "bookworm", "arch": "arm64", "variant": "minbase", "include": "python3"}
PYTHON = ("3.11", "cp311")
# pip does not expand manylinux tags: every one an aarch64 wheel may carry is listed
PLATFORMS = ["manylinux2014_aarch64"] + [f"manylinux_2_{i}_aarch64" for i in range(17, 29)]
SITE = "opt/slimship/site"  # inside the root
RUNNER = "opt/slimship/arm64_runner.py"
# the runtimes, at the host's versions; executorch is installed without its dependencies (the
# compiler's: pandas, hydra, torchao, ...), and with what its runtime imports
RUNTIMES = ("executorch", "torch", "ai-edge-litert", "onnxruntime")
EXECUTORCH_RUNTIME_DEPS = (
    "ruamel.yaml",
    "pyyaml",
    "tabulate",
    "packaging",
    "flatbuffers",
    "typing-extensions",
    "numpy",
)
# torch==2.13.0 on aarch64 exists on PyPI only as a CUDA build. Its libraries link against most
# of the CUDA runtime (checked with readelf -d), so those wheels are needed for `import torch`
# even though CUDA is never initialised; these are not linked by any library (only imported or
# dlopen'ed when CUDA runs) and are left out.
CUDA_ONLY = {
    "triton",
    "nvidia-cusolver",
    "nvidia-nvtx",
    "cuda-bindings",
    "cuda-pathfinder",
    "cuda-toolkit",
}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_ENTRY = "qemu-aarch64"
QEMU_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # from Debian's qemu-user-static
INSTALL_HINT = "apt-get install debootstrap qemu-user-static"
_CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
LOCK = (
    Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
) / "slimship-arm64.lock"
RUN_TIMEOUT_S = 900
BUILD_TIMEOUT_S = 3600


def cache_dir(option: str | Path | None = None) -> Path:
    return Path(option or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().absolute()


@contextlib.contextmanager
def machine(cache: Path, cpu: str = DEFAULT_CPU):
    """Prepare the root if needed and hold it for runs: yields an Arm64Root. Mounts are undone
    when the block ends, however it ends."""
    cache = Path(cache)
    _check_host()
    _check_cpu(cpu)
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(), _signals_raise(), _binfmt():
        try:
            _unmount_under(cache)  # a run killed with SIGKILL may have left them
            ready = prepare(cache)
            m = Arm64Root(cache / "root", cpu, ready)
            _mount(["-t", "proc", "proc", str(m.root / "proc")], "/proc inside the root")
            m.check()
            yield m
        finally:
            _unmount_under(cache)


@dataclass
class Arm64Root:
    """The emulated aarch64 machine: a Debian root run through chroot and qemu-user-static."""

    root: Path
    cpu: str
    ready: dict

    def check(self) -> None:
        """One aarch64 program through chroot: fails here, with the reason, if this machine
        does not run them."""
        proc = self._python(["-c", "import platform; print(platform.machine())"], timeout=120)
        if proc.returncode != 0 or proc.stdout.strip() != "aarch64":
            raise SlimshipError(
                f"chroot {self.root} did not run an aarch64 program "
                f"(exit {proc.returncode}: {_last_line(proc.stderr or proc.stdout)})"
                f"; the binfmt_misc entry {QEMU_ENTRY} must point at "
                "qemu-aarch64-static with the F flag"
            )
        shutil.copy2(Path(__file__).with_name("arm64_runner.py"), self.root / RUNNER)

    def describe(self) -> dict:
        qemu = subprocess.run([_qemu(), "--version"], check=False, capture_output=True, text=True)
        return {
            "emulator": qemu.stdout.splitlines()[0] if qemu.stdout else "qemu-aarch64",
            "cpu": self.cpu,
            "debian": f"{BASE['suite']} {BASE['arch']}",
            "root": str(self.root),
            "root_prepared": self.ready["base"]["created"],
            "site_prepared": self.ready["site"]["created"],
        }

    def run(self, backend: str, file: Path, inputs: np.ndarray, out_dir: Path) -> dict:
        """Run one file on `inputs` (already in the dtype the file takes) in the root.
        Returns the runner's result, with "outputs" (an array) and "etdump" (a path in
        out_dir) when it produced them; a failure is {"ok": False, "error": ...}."""
        job = Path(tempfile.mkdtemp(prefix="slimship-", dir=self.root / "tmp"))
        inside = "/" + str(job.relative_to(self.root))
        try:
            shutil.copy2(file, job / file.name)
            np.save(job / "inputs.npy", inputs)
            spec = {
                "backend": backend,
                "file": f"{inside}/{file.name}",
                "inputs": f"{inside}/inputs.npy",
                "outputs": f"{inside}/outputs.npy",
                "result": f"{inside}/result.json",
                "etdump": f"{inside}/run.etdp",
            }
            (job / "job.json").write_text(json.dumps(spec))
            proc = self._python([f"/{RUNNER}", f"{inside}/job.json"], timeout=RUN_TIMEOUT_S)
            return self._collect(job, proc, out_dir)
        finally:
            shutil.rmtree(job, ignore_errors=True)

    def _collect(self, job: Path, proc, out_dir: Path) -> dict:
        if not (job / "result.json").exists():
            how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            return {
                "ok": False,
                "error": f"the aarch64 runtime process died ({how}) before "
                f"writing a result: {_last_line(proc.stderr)}",
            }
        result = json.loads((job / "result.json").read_text())
        result["runtime_log"] = [ln for ln in proc.stderr.splitlines() if "XNNPACK" in ln][:5]
        if (job / "outputs.npy").exists():
            result["outputs"] = np.load(job / "outputs.npy")
        if (job / "run.etdp").exists():
            result["etdump"] = out_dir / f"{result['backend']}.etdp"
            shutil.copy2(job / "run.etdp", result["etdump"])
        return result

    def _python(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        # QEMU_CPU reaches qemu through the environment of the program the kernel hands it
        env = {
            "QEMU_CPU": self.cpu,
            "PYTHONPATH": f"/{SITE}",
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        try:
            # the host's chroot by its full path: `env` replaces PATH for the lookup too
            return subprocess.run(
                [_CHROOT, str(self.root), "/usr/bin/python3", *args],
                env=env,
                check=False,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise SlimshipError(
                f"the arm64 run ({' '.join(args[:2])}) took more than "
                f"{timeout:.0f} s under emulation and was stopped"
            ) from None


# ---------------------------------------------------------------------------------------------
# preparing the root: debootstrap once, then the wheels for the host's runtime versions


def prepare(cache: Path) -> dict:
    ready = _read_json(cache / "ready.json")
    if ready.get("base", {}).get("spec") != BASE or not (cache / "root").is_dir():
        ready = {"base": _build_base(cache)}
        _write_json(cache / "ready.json", ready)
    want = wanted_versions()
    if ready.get("site", {}).get("requested") != want or not (cache / "root" / SITE).is_dir():
        ready["site"] = _install_site(cache / "root", want)
        _write_json(cache / "ready.json", ready)
    else:
        log(f"[arm64] reusing the prepared root {cache / 'root'} ({_versions_line(want)})")
    return ready


def wanted_versions() -> dict[str, str]:
    """The runtimes installed on this host, at its versions (a local label such as +cpu names
    a build, not a release, and is dropped)."""
    out = {}
    for dist in RUNTIMES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist).split("+")[0]
    if "executorch" in out and "torch" not in out:
        raise SlimshipError("executorch is installed without torch; reinstall with `make test`")
    return out


def _build_base(cache: Path) -> dict:
    if shutil.which("debootstrap") is None:
        raise SlimshipError(
            f"debootstrap is not installed (needed once, to build the arm64 root): {INSTALL_HINT}"
        )
    partial, root = cache / "root.partial", cache / "root"
    for old in (partial, root):
        _remove_tree(old)
    mirror = os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
    log(
        f"[arm64] building the arm64 root in {root}: debootstrap {BASE['suite']} "
        f"{BASE['arch']} ({BASE['variant']} + {BASE['include']}) from {mirror}, about 110 "
        "Debian packages: ~40 MB to download, ~280 MB unpacked, 2-4 minutes (run once, cached)"
    )
    start = time.perf_counter()
    cmd = [
        "debootstrap",
        f"--arch={BASE['arch']}",
        f"--variant={BASE['variant']}",
        f"--include={BASE['include']}",
        BASE["suite"],
        str(partial),
        mirror,
    ]
    _stream(
        cmd,
        _DebootstrapProgress(),
        f"debootstrap could not build the root; check that "
        f"{mirror} can be reached (or set {MIRROR_ENV})",
    )
    _unmount_under(partial)  # debootstrap mounts /proc and /sys while it configures
    for deb in (partial / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    _fake_free_sys(partial)
    os.replace(partial, root)
    info = {
        "spec": BASE,
        "mirror": mirror,
        "created": _now(),
        "bytes": _tree_bytes(root),
        "seconds": round(time.perf_counter() - start, 1),
    }
    log(f"[arm64] root built in {info['seconds']:.0f} s, {info['bytes'] / 1e6:.0f} MB")
    return info


def _fake_free_sys(root: Path) -> None:
    """/sys is not mounted in the root: cpuinfo in the emulated process crashes on the host's
    x86 /sys. These plain files give it the CPU count it needs (the one /proc/cpuinfo shows);
    nothing else of /sys is there, and cpuinfo copes with that."""
    cpus = root / "sys/devices/system/cpu"
    cpus.mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text(f"0-{(os.cpu_count() or 1) - 1}\n")


def _install_site(root: Path, want: dict[str, str]) -> dict:
    log(f"[arm64] installing aarch64 wheels of {_versions_line(want)} into the root")
    site, partial = root / SITE, root / (SITE + ".partial")
    wheels = root.parent / "wheels"
    for old in (partial, wheels):
        shutil.rmtree(old, ignore_errors=True)
    seconds, start = {}, time.perf_counter()
    pins, left_out = _resolve(want, root.parent)
    seconds["resolve"] = round(time.perf_counter() - start, 1)
    log(
        f"[arm64] {len(pins)} wheels to download (left out, CUDA-only: "
        f"{', '.join(left_out) or 'none'})"
    )
    start = time.perf_counter()
    _pip(
        ["download", "--no-deps", "-d", str(wheels), *_platform_args(), *pins],
        "download the aarch64 wheels",
        _PipProgress(),
    )
    download = _tree_bytes(wheels)
    seconds["download"] = round(time.perf_counter() - start, 1)
    log(f"[arm64] downloaded {download / 1e6:.0f} MB in {seconds['download']:.0f} s; installing")
    start = time.perf_counter()
    _pip(
        [
            "install",
            "--no-index",
            "--no-deps",
            "--find-links",
            str(wheels),
            "--target",
            str(partial),
            *_platform_args(),
            *pins,
        ],
        "install the aarch64 wheels",
        None,
    )
    pruned = _prune_unlinked_cuda(partial)
    shutil.rmtree(site, ignore_errors=True)
    os.replace(partial, site)
    shutil.rmtree(wheels, ignore_errors=True)
    seconds["install"] = round(time.perf_counter() - start, 1)
    info = {
        "requested": want,
        "installed": dict(p.split("==") for p in pins),
        "left_out_cuda_only": left_out,
        "download_bytes": download,
        "installed_bytes": _tree_bytes(site),
        "pruned_bytes": pruned,
        "seconds": seconds,
        "created": _now(),
    }
    log(
        f"[arm64] wheels installed: {info['installed_bytes'] / 1e6:.0f} MB "
        f"({pruned / 1e6:.0f} MB of CUDA libraries nothing links against removed)"
    )
    return info


def _resolve(want: dict[str, str], workdir: Path) -> tuple[list[str], list[str]]:
    """(name==version of every wheel to install, the CUDA-only ones left out): pip's own
    resolution for aarch64 (a dry run) of the runtimes, every package pinned to the host's
    version where the host has it."""
    report, constraints = workdir / "resolve.json", workdir / "constraints.txt"
    constraints.write_text(
        "".join(
            f"{d.metadata['Name']}=={d.version.split('+')[0]}\n"
            for d in metadata.distributions()
            if d.metadata["Name"]
        )
    )
    reqs = [f"{d}=={v}" for d, v in want.items() if d != "executorch"]
    if "executorch" in want:
        reqs += list(EXECUTORCH_RUNTIME_DEPS)
    log("[arm64] resolving the aarch64 wheels with pip (dry run)")
    with tempfile.TemporaryDirectory() as target:
        _pip(
            [
                "install",
                "--dry-run",
                "--ignore-installed",
                "--report",
                str(report),
                "--target",
                target,
                "-c",
                str(constraints),
                *_platform_args(),
                *reqs,
            ],
            "resolve the aarch64 wheels",
            None,
        )
    found = {
        _canonical(i["metadata"]["name"]): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    pins = [f"{n}=={v}" for n, v in sorted(found.items()) if n not in CUDA_ONLY]
    if "executorch" in want:
        pins.append(f"executorch=={want['executorch']}")
    return pins, sorted(CUDA_ONLY & set(found))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _platform_args() -> list[str]:
    args = [
        "--only-binary=:all:",
        "--python-version",
        PYTHON[0],
        "--implementation",
        "cp",
        "--abi",
        PYTHON[1],
    ]
    for tag in PLATFORMS:
        args += ["--platform", tag]
    return args


def _pip(args: list[str], what: str, progress) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--disable-pip-version-check",
        "--no-input",
        "--no-cache-dir",
        *args,
    ]
    _stream(
        cmd,
        progress or (lambda line: None),
        f"pip could not {what}; check that PyPI can be reached",
    )


def _prune_unlinked_cuda(site: Path) -> int:
    """Delete the libraries under site/nvidia that nothing installed links against, directly
    or through another library (DT_NEEDED): cuDNN's engines, cuBLAS' helpers and the like,
    which are loaded only when CUDA runs. Returns the bytes freed."""
    nvidia = site / "nvidia"
    if not nvidia.is_dir():
        return 0
    libs = {p.name: p for p in nvidia.rglob("*.so*") if p.is_file()}
    stack = [p for p in site.rglob("*.so*") if p.is_file() and nvidia not in p.parents]
    keep: set[str] = set()
    while stack:
        for name in _needed(stack.pop()):
            if name in libs and name not in keep:
                keep.add(name)
                stack.append(libs[name])
    freed = 0
    for name, path in libs.items():
        if name not in keep:
            freed += path.stat().st_size
            path.unlink()
    return freed


def _needed(path: Path) -> list[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF file, read from its section headers;
    [] for anything else."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x7fELF\x02\x01":
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            (shoff,) = struct.unpack_from("<Q", m, 0x28)
            entsize, count = struct.unpack_from("<HH", m, 0x3A)
            # (name, type, flags, addr, offset, size, link, info, align, entsize)
            sections = [
                struct.unpack_from("<IIQQQQIIQQ", m, shoff + i * entsize) for i in range(count)
            ]
            out = []
            for s in (s for s in sections if s[1] == 6):  # SHT_DYNAMIC
                strtab = sections[s[6]][4]  # its sh_link is the string table
                for off in range(s[4], s[4] + s[5], 16):
                    tag, val = struct.unpack_from("<qQ", m, off)
                    if tag == 0:  # DT_NULL
                        break
                    if tag == 1:  # DT_NEEDED
                        out.append(m[strtab + val : m.find(b"\0", strtab + val)].decode())
            return out


class _DebootstrapProgress:
    """debootstrap's stage lines, and every 20th package it retrieves."""

    STAGES = (
        "Retrieving Release",
        "Resolving",
        "Found",
        "Installing core",
        "Unpacking the base",
        "Configuring the base",
        "Base system installed",
    )

    def __init__(self):
        self.retrieved = 0

    def __call__(self, line: str) -> None:
        if line.startswith("I: Retrieving ") and "Release" not in line and "Packages" not in line:
            self.retrieved += 1
            if self.retrieved % 20 == 1:
                log(f"[arm64] debootstrap: retrieving package {self.retrieved} ({line[14:]})")
        elif line.startswith("I: ") and line[3:].startswith(self.STAGES):
            log(f"[arm64] debootstrap: {line[3:]}")


class _PipProgress:
    """pip's "Downloading NAME (SIZE)" lines."""

    def __call__(self, line: str) -> None:
        m = re.search(r"Downloading (\S+?)(?:\.whl)? \(([^)]+)\)", line)
        if m:
            log(f"[arm64] downloading {m.group(1).split('/')[-1]} ({m.group(2)})")


# ---------------------------------------------------------------------------------------------
# the host side: prerequisites, binfmt_misc, mounts, signals, locking, subprocesses


def _check_host() -> None:
    if platform.system() != "Linux":
        raise SlimshipError("verify-arm64 runs on Linux only (it needs binfmt_misc and chroot)")
    if os.geteuid() != 0:
        raise SlimshipError(
            "verify-arm64 needs root (it mounts binfmt_misc and /proc, and "
            "uses chroot): run it as root, as CI does, or with sudo"
        )
    if not QEMU_CONF.exists() or shutil.which("qemu-aarch64-static") is None:
        raise SlimshipError(
            f"qemu-user-static is not installed (its {QEMU_CONF} is what "
            f"registers aarch64 programs): {INSTALL_HINT}"
        )
    if "binfmt_misc" not in Path("/proc/filesystems").read_text():
        raise SlimshipError(
            "this kernel has no binfmt_misc, so it cannot hand aarch64 "
            "programs to qemu; run verify-arm64 on a machine that has it"
        )


def _check_cpu(cpu: str) -> None:
    text = subprocess.run(
        [_qemu(), "-cpu", "help"], check=False, capture_output=True, text=True
    ).stdout
    known = text.split()[2:]  # "Available CPUs:" then the names
    if cpu.split(",")[0] not in known:  # properties may follow: max,sme=off
        raise UsageError(
            f"--cpu {cpu}: qemu-aarch64 does not emulate it; available: {', '.join(known)}"
        )


def _qemu() -> str:
    return shutil.which("qemu-aarch64-static") or "qemu-aarch64-static"


@contextlib.contextmanager
def _binfmt():
    """qemu-aarch64 registered with binfmt_misc while the block runs. Debian's entry has the F
    flag: the kernel opens the interpreter at registration, so it need not exist inside the
    root. Only what this function mounted or registered is undone."""
    mounted = registered = False
    try:
        if not (BINFMT / "register").exists():
            _mount(["-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], "binfmt_misc")
            mounted = True
        entry = BINFMT / QEMU_ENTRY
        if not entry.exists():
            try:
                (BINFMT / "register").write_text(QEMU_CONF.read_text().strip())
            except OSError as e:
                raise SlimshipError(
                    f"cannot register {QEMU_ENTRY} with binfmt_misc "
                    f"({e.strerror}): this machine does not allow it"
                ) from None
            registered = True
        status = entry.read_text()
        if not status.startswith("enabled") or not re.search(r"^flags: \w*F", status, re.MULTILINE):
            raise SlimshipError(
                f"the binfmt_misc entry {entry} is disabled or lacks the F "
                f"flag; remove it (echo -1 > {entry}) and run again"
            )
        yield
    finally:
        if registered:
            with contextlib.suppress(OSError):
                (BINFMT / QEMU_ENTRY).write_text("-1")
        if mounted:
            subprocess.run(["umount", str(BINFMT)], check=False, capture_output=True)


def _mount(args: list[str], what: str) -> None:
    proc = subprocess.run(["mount", *args], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlimshipError(
            f"cannot mount {what}: {_last_line(proc.stderr)}; this machine "
            "(a container without CAP_SYS_ADMIN?) does not allow it"
        )


def _mounts_under(path: Path) -> list[str]:
    prefix = str(Path(path).resolve()) + "/"
    points = [
        ln.split()[1].replace("\\040", " ")
        for ln in Path("/proc/self/mounts").read_text().splitlines()
    ]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _unmount_under(path: Path) -> None:
    for point in _mounts_under(path):
        if subprocess.run(["umount", point], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    left = _mounts_under(path)
    if left:
        raise SlimshipError(f"cannot unmount {left[0]}; unmount it by hand (umount -l)")


def _remove_tree(path: Path) -> None:
    """rm -r that refuses to descend into a mount (a bind-mounted /dev would be the host's)."""
    if _mounts_under(path):
        raise SlimshipError(f"{path} still has mounts inside: {_mounts_under(path)[0]}")
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _signals_raise():
    """SIGTERM and SIGHUP raise SystemExit, so that the finally blocks that undo the mounts run
    (SIGINT already raises KeyboardInterrupt). Signals can be set from the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _locked():
    """One verify-arm64 at a time on this machine, whatever its cache: the binfmt_misc entry
    is machine-wide, and a run that registered it removes it when it ends."""
    with open(LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"[arm64] waiting for another verify-arm64 on this machine ({LOCK})")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _stream(cmd: list[str], on_line, failure: str) -> None:
    """Run a long command, handing each output line to on_line; on failure raise with its last
    error line. Ctrl-C or SIGTERM stops the command before the exception goes on."""
    tail: list[str] = []
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-40:]
            on_line(line)
            if time.monotonic() > deadline:
                raise SlimshipError(f"{cmd[0]} ran for more than {BUILD_TIMEOUT_S} s: stopped")
        proc.wait()
    except BaseException:
        _stop(proc)
        raise
    if proc.returncode != 0:
        # the first error line names the cause; later ones (pip's ResolutionImpossible) sum up
        errors = [ln for ln in tail if ln.startswith(("E:", "ERROR:"))] or tail[-1:] or [""]
        raise SlimshipError(f"{failure} (exit {proc.returncode}: {errors[0].strip()})")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: debootstrap and its children
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _tree_bytes(path: Path) -> int:
    return sum(
        p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink()
    )


def _versions_line(versions: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def _last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
