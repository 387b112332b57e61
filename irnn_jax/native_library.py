"""The native kernel library: which file, whether it can run on this CPU, and its FFI targets.

`irnn_jax/native.py` calls the kernels; this module finds the library (the package's build,
irnn_jax/_rnn_kernel*.so, or the file IRNN_JAX_NATIVE_LIBRARY names) and makes sure that nothing it
does can take the process down before it is loaded: the CPU features it was compiled for (a string
the build writes into it, csrc/rnn_kernel.cc's IrnnBuildIsa) against this CPU's, its file against
its own ELF headers (a truncated copy), and its self-test (IrnnSelfTest: small forward and backward
passes against plain loops) in a child process, where an illegal instruction or a bus error ends
the child only. A library that fails any check is never loaded; the reason is one warning, and
`Status.reason`.
"""

import ctypes
import dataclasses
import functools
import os
import platform as platform_lib
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import jax
from absl import logging

TARGETS = {  # FFI target name: the kernel library's symbol
    "irnn_rnn_forward": "IrnnRnnForward",
    "irnn_rnn_backward": "IrnnRnnBackward",
    "irnn_lstm_forward": "IrnnLstmForward",
    "irnn_lstm_backward": "IrnnLstmBackward",
}

LIBRARY_ENV = "IRNN_JAX_NATIVE_LIBRARY"  # a kernel library to load instead of the package's own build
# The CPU's features, as /proc/cpuinfo's "flags" names them, space-separated, instead of the CPU's own: to
# see what a CPU without some of them would do (tests; a login node checking for its compute nodes).
CPU_FLAGS_ENV = "IRNN_JAX_CPU_FLAGS"
# A variant of the package's build to load instead of the best one this CPU runs ("avx2", "avx512"): to
# time or test the AVX2 path on an AVX-512 machine.
ISA_ENV = "IRNN_JAX_NATIVE_ISA"
ISA_MARKER = re.compile(rb"irnn-jax-native-isa:([a-z0-9_,]*);")  # csrc/rnn_kernel.cc, IrnnBuildIsa
PROBE_TIMEOUT_S = 60
# The child that tries a library before the training process loads it: exit 0 when its self-test passes.
_PROBE = """
import ctypes, sys
try:
    lib = ctypes.CDLL(sys.argv[1])
except OSError as e:
    print(e, file=sys.stderr)
    sys.exit(101)
try:
    test = lib.IrnnSelfTest
except AttributeError:
    sys.exit(100)
sys.exit(test())
"""


@dataclasses.dataclass(frozen=True)
class Status:
    """What `_load` found: `reason` is None when the kernels are registered and runnable here."""

    reason: str | None
    library: str = ""  # the file tried, or ""
    variant: str = ""  # what the library was compiled for: "avx512", "avx2", "x86-64", "aarch64" ... ("" unknown)


def cpu_flags() -> frozenset[str] | None:
    """This CPU's features, as /proc/cpuinfo names them (IRNN_JAX_CPU_FLAGS overrides), or None where
    they cannot be read (not Linux)."""
    if (override := os.environ.get(CPU_FLAGS_ENV)) is not None:
        return frozenset(override.replace(",", " ").split())
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86; ARM
            return frozenset(value.split())
    return None


def build_features(library: Path) -> list[str] | None:
    """The CPU features the library was compiled for (its IrnnBuildIsa string), read from the file's
    bytes without loading it; None when the file holds no such string (not a build of csrc/, or damaged)."""
    m = ISA_MARKER.search(library.read_bytes())
    return None if m is None else [f for f in m.group(1).decode().split(",") if f]


def truncated(library: Path) -> str | None:
    """Why an ELF file is shorter than its own headers say (a partial copy), or None. A truncated library
    can load and pass a small self-test, and then die of a bus error in a later call that reaches the
    part that is missing."""
    with open(library, "rb") as f:
        head = f.read(64)
        size = os.fstat(f.fileno()).st_size
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:  # ELFCLASS64
            return None if head[:4] != b"\x7fELF" else "not a 64-bit ELF file"
        order = "<" if head[5] == 1 else ">"
        phoff, shoff = struct.unpack_from(order + "QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 54)
        ends = [shoff + shentsize * shnum] if shnum else []
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        if len(table) < phentsize * phnum:
            return f"{size} bytes, shorter than its program headers"
        for k in range(phnum):
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(order + "IIQQQQ", table, k * phentsize)
            if p_type == 1:  # PT_LOAD
                ends.append(p_offset + p_filesz)
    need = max(ends, default=0)
    return f"{size} bytes where its headers need {need}" if size < need else None


def variant_name(features: list[str]) -> str:
    for name, needs in (("avx512", "avx512f"), ("avx2", "avx2"), ("aarch64", "aarch64")):
        if needs in features:
            return name
    return "x86-64"


def _probe(library: Path) -> str | None:
    """Loads the library and runs its self-test in a child process; None when it passed, else why not.
    Whatever a bad library does (an illegal instruction, a bus error on a truncated file) ends the child."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(library)], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return f"its self-test did not finish in {PROBE_TIMEOUT_S} s"
    except OSError as e:
        return f"its self-test could not start ({e})"
    code = done.returncode
    if code == 0:
        return None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = {"SIGILL": "an illegal instruction: built for another CPU", "SIGBUS": "a bus error: a damaged file"}
        return f"it killed its self-test with {name} ({what.get(name, 'a crash')})"
    if code == 100:
        return "it has no self-test (out of date)"
    if code == 101:
        return f"it does not load ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no reason'})"
    return f"its self-test failed (check {code}: its results differ from plain loops)"


def try_library(library: Path) -> Status:
    """Status of one library file: its features against this CPU's, then its self-test in a child."""
    fix = (
        f"unset {LIBRARY_ENV} to use the package's own kernel"
        if os.environ.get(LIBRARY_ENV)
        else "rebuild it on this machine with `pip install -e .`"
    )
    try:
        short = truncated(library)
        features = build_features(library)
    except OSError as e:
        return Status(f"the native kernel {library} cannot be read ({e}); {fix}", str(library))
    if short:
        return Status(f"the native kernel {library} is truncated ({short}); {fix}", str(library))
    if features is None:
        return Status(
            f"the native kernel {library} is damaged or out of date (it does not say what it was built for); {fix}",
            str(library),
        )
    variant = variant_name(features)
    flags = cpu_flags()
    if flags is not None:
        missing = [f for f in features if f not in flags and f != "aarch64"]
        if "aarch64" in features and platform_lib.machine() not in ("aarch64", "arm64"):
            missing = ["aarch64"]
        if missing:
            named = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            return Status(f"{library.name} ({variant}) needs {named}, which this CPU lacks", str(library), variant)
    if reason := _probe(library):
        return Status(f"the native kernel {library} cannot run here: {reason}; {fix}", str(library), variant)
    return Status(None, str(library), variant)


@functools.cache
def _load() -> Status:
    """Registers the kernels' FFI targets (TARGETS) from a library that passed its checks (`try_library`).

    The library is the best of the package's builds (irnn_jax/_rnn_kernel_<variant>*.so: AVX-512, then
    AVX2) that passes its checks here, or the variant IRNN_JAX_NATIVE_ISA names, or the file that
    IRNN_JAX_NATIVE_LIBRARY names (another build of csrc/, as benchmarks/kernel_ab.py times).
    Nothing is loaded into this process before its CPU features have been checked against this CPU's
    and its self-test has passed in a child process. When it cannot run, one warning says why (the
    XLA path, "fused", serves recurrence "auto" then).
    """
    status = _find_and_load()
    if status.reason:
        logging.warning("native kernel unavailable, the XLA path serves recurrence 'auto': %s", status.reason)
    return status


# The package's libraries, best first: a build the user asked for (IRNN_JAX_NATIVE_FLAGS), then the
# instruction sets of csrc/build.json's variants, then a build for another architecture.
PREFERENCE = ("custom", "avx512", "avx2", "generic")
# Variants that `recurrence="auto"` takes: those measured against XLA on their instruction set
# (docs/performance.md). Another one (a build for ARM, or for x86-64 below AVX2) runs when asked for.
MEASURED = ("avx512", "avx2")


def variant_of_file(library: Path) -> str:
    """The variant a package library was built as, from its name: _rnn_kernel_<variant>.cpython-...so."""
    stem = library.name.split(".")[0]
    return stem.removeprefix("_rnn_kernel_") if stem.startswith("_rnn_kernel_") else ""


def package_libraries() -> list[Path]:
    """The package's kernel libraries, best first (PREFERENCE)."""
    found = Path(__file__).parent.glob("_rnn_kernel*.so")
    rank = {v: k for k, v in enumerate(PREFERENCE)}
    return sorted(found, key=lambda p: (rank.get(variant_of_file(p), len(rank)), p.name))


def _find_and_load() -> Status:
    library, status = choose()
    return status if library is None else _register(library, status)


def choose() -> tuple[Path | None, Status]:
    """The library to load (None when none can) and its Status, after every check; nothing is loaded
    into this process."""
    if chosen := os.environ.get(LIBRARY_ENV):
        if not Path(chosen).is_file():
            return None, Status(
                f"{LIBRARY_ENV}={chosen} is not a file: unset it to use the package's own kernel", chosen
            )
        found = [Path(chosen)]
    else:
        found = package_libraries()
        if forced := os.environ.get(ISA_ENV):
            built = [variant_of_file(p) for p in found]
            found = [p for p in found if variant_of_file(p) == forced]
            if not found:
                return None, Status(
                    f"{ISA_ENV}={forced}: no such variant is built here (built: {', '.join(built) or 'none'})"
                )
    if not found:
        return None, Status(
            "the native kernel is not built (irnn_jax/_rnn_kernel*.so is missing): reinstall with a C++ compiler "
            "present (`pip install -e .`), or use --config.recurrence=fused"
        )
    reasons = []
    for library in found:  # best first: the first that passes its checks here
        status = try_library(library.resolve())
        if status.reason is None:
            return library.resolve(), status
        reasons.append(status.reason)
    if len(reasons) == 1:
        return None, Status(f"the native kernel cannot run on this CPU: {reasons[0]}", str(found[0]), "")
    return None, Status(f"no build of the native kernel runs on this CPU: {'; '.join(reasons)}", str(found[0]), "")


def _register(library: Path, status: Status) -> Status:
    try:
        lib = ctypes.cdll.LoadLibrary(str(library))
    except OSError as e:
        return Status(f"the native kernel {library.name} does not load ({e}); rebuild it with `pip install -e .`")
    try:
        symbols = {name: getattr(lib, symbol) for name, symbol in TARGETS.items()}
    except AttributeError as e:
        return Status(f"the native kernel {library.name} is out of date ({e}); rebuild it with `pip install -e .`")
    for name, symbol in symbols.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
    return status
