"""The package's build: pyproject.toml holds the metadata; this adds the one compiled part.

csrc/rnn_kernel.cc and csrc/lstm_kernel.cc (with csrc/kernels.h), the native CPU kernels of recurrence
"native" (irnn_jax/native.py: the simple RNN and the LSTM), are compiled against the XLA FFI headers
that jaxlib ships (a build requirement in pyproject.toml) into one library, irnn_jax/_rnn_kernel*.so.
It is optional: where it cannot be built (no C++ compiler), the install goes on, and recurrence
"native" says why it cannot run when asked for; "scan" and "fused" need nothing compiled. MANIFEST.in
puts the C++ sources into a source distribution. csrc/build.json holds the sources and compiler
arguments, which benchmarks/kernel_ab.py reads too. IRNN_JAX_NATIVE_FLAGS replaces its default
"-O3 -march=native" (the kernel is built for the machine that installs it; set e.g.
"-O3 -march=x86-64-v3" to build for others).
"""

import importlib.util
import json
import os
from pathlib import Path

from setuptools import Extension, setup


def ffi_include_dir() -> str:
    """jaxlib's include folder (what jax.ffi.include_dir() returns), found without importing jax."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("building the native kernel needs jaxlib (pyproject.toml lists it under build-system)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "include")


recipe = json.loads((Path(__file__).resolve().parent / "csrc" / "build.json").read_text())
flags = os.environ.get("IRNN_JAX_NATIVE_FLAGS", recipe["default_flags"]).split()
setup(
    ext_modules=[
        Extension(
            "irnn_jax._rnn_kernel",
            sources=recipe["sources"],
            depends=recipe["depends"],
            include_dirs=[ffi_include_dir(), *recipe["include_dirs"]],
            extra_compile_args=[*recipe["compile_args"], *flags],
            language="c++",
            optional=True,
        )
    ]
)
