"""The package's build: pyproject.toml holds the metadata; this adds the one compiled part.

csrc/rnn_kernel.cc and csrc/lstm_kernel.cc (with csrc/kernels.h), the native CPU kernels of recurrence
"native" (irnn_jax/native.py: the simple RNN and the LSTM), are compiled against the XLA FFI headers
that jaxlib ships (a build requirement in pyproject.toml). On x86-64 they are compiled once per
instruction set of csrc/build.json's "variants" (AVX-512: x86-64-v4, AVX2: x86-64-v3), each into a
library of its own, irnn_jax/_rnn_kernel_<variant>*.so, with the vector width and register blocks of
that instruction set (csrc/kernels.h); irnn_jax/native_library.py loads the best one that the CPU it
runs on can execute, so one build serves every x86-64 machine (a cluster's login node builds, its
compute nodes run). Elsewhere (ARM) one library of "other_flags". They are optional: where they
cannot be built (no C++ compiler), the install goes on, and recurrence "native" says why it cannot
run when asked for; "scan" and "fused" need nothing compiled. IRNN_JAX_NATIVE_FLAGS replaces the
variants with one library of those flags (e.g. "-O3 -march=native"). MANIFEST.in puts the C++
sources into a source distribution; benchmarks/kernel_ab.py reads build.json too.
"""

import importlib.util
import json
import os
import platform
from pathlib import Path

from setuptools import Extension, setup


def ffi_include_dir() -> str:
    """jaxlib's include folder (what jax.ffi.include_dir() returns), found without importing jax."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("building the native kernel needs jaxlib (pyproject.toml lists it under build-system)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "include")


ROOT = Path(__file__).resolve().parent
recipe = json.loads((ROOT / "csrc" / "build.json").read_text())


def variant_sources(name: str) -> list[str]:
    """One wrapper file per source and variant (build/irnn_csrc/<variant>/x.cc: #include of csrc/x.cc), so
    that each variant's objects have paths of their own: with the sources themselves, every variant would
    compile to the same csrc/x.o, and setuptools would link the first variant's objects into the others
    (an AVX-512 object in the AVX2 library)."""
    folder = Path("build") / "irnn_csrc" / name
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for source in recipe["sources"]:
        wrapper = folder / Path(source).name
        text = f'#include "{(ROOT / source).as_posix()}"\n'
        if not wrapper.is_file() or wrapper.read_text() != text:
            wrapper.write_text(text)
        out.append(wrapper.as_posix())
    return out


if os.environ.get("IRNN_JAX_NATIVE_FLAGS"):
    variants = {"custom": os.environ["IRNN_JAX_NATIVE_FLAGS"]}
elif platform.machine().lower() in ("x86_64", "amd64"):
    variants = recipe["variants"]
else:
    variants = {"generic": recipe["other_flags"]}
setup(
    ext_modules=[
        Extension(
            f"irnn_jax._rnn_kernel_{name}",
            sources=variant_sources(name),
            depends=[*recipe["sources"], *recipe["depends"]],
            include_dirs=[ffi_include_dir(), *(str(ROOT / d) for d in recipe["include_dirs"])],
            extra_compile_args=[*recipe["compile_args"], *flags.split()],
            language="c++",
            optional=True,
        )
        for name, flags in variants.items()
    ],
    # The variants compile side by side, one per core (the build's time is about the longest one's).
    options={"build_ext": {"parallel": max(1, min(len(variants), os.cpu_count() or 1))}},
)
