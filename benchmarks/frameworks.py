"""The worker side of benchmarks/compare.py: what runs inside one benchmark subprocess.

`worker_main(spec_json)` builds one framework's IRNN training step (`setup_jax`, `setup_keras`,
`setup_torch`), times it (`time_runner`) or times a large matmul (`measure_matmul`), and writes the
result as JSON to spec["out"]. compare.py starts it in a fresh Python for each measurement.
"""

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SEQ_LEN, INPUTS, CLASSES = 784, 1, 10


def flop_per_sample(hidden: int, seq_len: int = SEQ_LEN, inputs: int = INPUTS, cell: str = "irnn") -> int:
    """Forward + backward FLOP of one sequence through the recurrence's matmuls (the dense head and
    the elementwise work are left out); an LSTM's kernels are 4 gates wide."""
    gates = 4 if cell == "lstm" else 1
    return 3 * seq_len * gates * (2 * hidden * hidden + 2 * hidden * inputs)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _proc_status_mib(field: str) -> float | None:
    """VmRSS (now) or VmHWM (peak) of this process in MiB, from /proc; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if field == "VmHWM":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return None


@dataclasses.dataclass
class Runner:
    """One framework's training step on a fixed batch, ready to time."""

    step: Callable[[], None]
    sync: Callable[[], None]  # waits for queued steps (asynchronous dispatch)
    device: str
    platform: str  # "cpu" or "gpu": which matmul peak applies
    threads: str
    variant: str
    versions: dict
    device_peak_mib: Callable[[], float | None] = lambda: None
    steps_per_call: int = 1  # optimiser steps one call of `step` runs


def synthetic_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (B, 28, 28) and int32 labels (B,); the values do not change the speed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8), rng.integers(0, CLASSES, batch).astype(np.int32)


def _as_sequences(images: np.ndarray) -> np.ndarray:
    """Row-major pixel sequences in [0, 1]: (B, 784, 1) float32."""
    return (images.reshape(len(images), SEQ_LEN, INPUTS) / 255.0).astype(np.float32)


def setup_jax(spec: dict, mark_baseline: Callable[[], None]) -> Runner:
    """This project's training loop on the `keras` preset of pixel MNIST, as `experiments.pixel_mnist` runs it.

    The CPU is split into `spec["cpu_devices"]` devices as the command line does (0: one per core), the
    batch divided among them; the training set (here: the one synthetic batch) lives on the device;
    one call of `step` is `loop.compile_steps`' jitted chunk of `spec["steps"]` optimiser steps."""
    import flax
    import jax

    from experiments.configs import pixel_mnist
    from irnn_jax import data, loop, parallel, recurrence

    devices = parallel.use_cpu_devices(spec.get("cpu_devices", 0), spec["batch"])
    dev = jax.devices()[0]
    mark_baseline()
    config = pixel_mnist.get_config("keras")
    config.batch_size, config.hidden_size = spec["batch"], spec["hidden"]
    config.cell = spec.get("cell", "irnn")
    if spec["recurrence"]:
        config.recurrence = spec["recurrence"]
    split = data.Split(*synthetic_batch(spec["batch"]))  # a training set of one batch: each step takes all of it
    s = loop.setup(config, dataset=data.Dataset("synthetic", split, split, source="synthetic"))
    mesh, steps = s.mesh, spec["steps"]
    idx, mask = s.train_indices(0, steps)
    holder = [s.state]

    def step():
        holder[0] = s.chunk_fn(holder[0], s.train_data, idx, mask)  # the state is donated: keep only the newest

    def device_peak():
        stats = dev.memory_stats() if dev.platform != "cpu" else None
        return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None

    on_cpu = dev.platform == "cpu"
    return Runner(
        step=step,
        sync=lambda: jax.block_until_ready(holder[0]),
        device=f"cpu x {mesh.size}" if on_cpu else f"{dev.platform} ({dev.device_kind}) x {mesh.size}",
        platform="cpu" if on_cpu else "gpu",
        threads=str(_cores()) if on_cpu else "-",
        variant=f"recurrence={recurrence.resolve(config.recurrence, config.cell, config.hidden_size)}, "
        f"{mesh.size} device(s)"
        + ("" if devices is None or not on_cpu else f" (--cpu_devices={spec.get('cpu_devices', 0)})"),
        versions={"jax": jax.__version__, "flax": flax.__version__},
        device_peak_mib=device_peak,
        steps_per_call=steps,
    )


def setup_keras(spec: dict, mark_baseline: Callable[[], None]) -> Runner:
    """Keras 3 on TensorFlow: SimpleRNN + Dense + softmax, timed with `train_on_batch`, as in the source."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    mark_baseline()
    hidden = spec["hidden"]
    model = keras.Sequential(
        [
            keras.Input((SEQ_LEN, INPUTS)),
            keras.layers.SimpleRNN(
                hidden,
                activation="relu",
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
                recurrent_initializer=keras.initializers.Identity(gain=1.0),
            ),
            keras.layers.Dense(CLASSES),
            keras.layers.Activation("softmax"),
        ]
    )
    optimizer = keras.optimizers.RMSprop(learning_rate=1e-6, global_clipnorm=1.0)
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    images, labels = synthetic_batch(spec["batch"])
    x, y = _as_sequences(images), keras.utils.to_categorical(labels, CLASSES)

    def device_peak():
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20 if gpus else None

    intra = tf.config.threading.get_intra_op_parallelism_threads()
    return Runner(
        step=lambda: model.train_on_batch(x, y),
        sync=lambda: None,  # train_on_batch returns host values, so each call has finished
        device=f"gpu ({gpus[0].name})" if gpus else "cpu",
        platform="gpu" if gpus else "cpu",
        threads=str(intra) if intra else f"{_cores()} (TF default)",
        variant=f"train_on_batch, jit_compile={model.jit_compile}",
        versions={"keras": keras.__version__, "tensorflow": tf.__version__},
        device_peak_mib=device_peak,
    )


def setup_torch(spec: dict, mark_baseline: Callable[[], None]) -> Runner:
    """PyTorch eager: nn.RNN(relu) + nn.Linear, RMSprop with Keras constants, clip_grad_norm_."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.set_num_threads(spec.get("torch_threads") or _cores())
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    mark_baseline()
    torch.manual_seed(0)
    hidden = spec["hidden"]
    rnn = nn.RNN(INPUTS, hidden, nonlinearity="relu", batch_first=True).to(device)
    head = nn.Linear(hidden, CLASSES).to(device)
    with torch.no_grad():  # the IRNN initialisation (speed does not depend on it)
        nn.init.normal_(rnn.weight_ih_l0, std=0.001)
        rnn.weight_hh_l0.copy_(torch.eye(hidden))
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    params = [*rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.RMSprop(params, lr=1e-6, alpha=0.9, eps=1e-7)
    images, labels = synthetic_batch(spec["batch"])
    x = torch.from_numpy(_as_sequences(images)).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        _, h_1xBxH = rnn(x)
        F.cross_entropy(head(h_1xBxH[0]), y).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return Runner(
        step=step,
        sync=torch.cuda.synchronize if cuda else lambda: None,
        device=f"cuda ({torch.cuda.get_device_name()})" if cuda else "cpu",
        platform="gpu" if cuda else "cpu",
        threads=str(torch.get_num_threads()) if not cuda else "-",
        variant="eager" + (", cuDNN" if cuda and torch.backends.cudnn.is_available() else ""),
        versions={"torch": torch.__version__},
        device_peak_mib=lambda: torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    )


SETUPS = {"jax": setup_jax, "keras": setup_keras, "torch": setup_torch}


def time_runner(runner: Runner, warmup: int, steps: int, repeats: int) -> list[float]:
    """Seconds per step of each repetition of `steps` steps, after `warmup` calls of `step`."""
    for _ in range(warmup):
        runner.step()
    runner.sync()
    calls = -(-steps // runner.steps_per_call)
    per_step = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            runner.step()
        runner.sync()
        per_step.append((time.perf_counter() - t0) / (calls * runner.steps_per_call))
    return per_step


def measure_matmul(size: int, repeats: int) -> dict:
    """float32 size x size jnp.matmul FLOP/s on JAX's CPU and default devices (median of repeats)."""
    import jax
    import jax.numpy as jnp

    matmul = jax.jit(lambda a, b: a @ b)
    out = {}
    for dev in {d.platform: d for d in (jax.devices("cpu")[0], jax.devices()[0])}.values():
        keys = jax.random.split(jax.random.key(0))
        a = jax.device_put(jax.random.normal(keys[0], (size, size), jnp.float32), dev)
        # Norm-preserving factor: the chained product stays finite (and free of denormals).
        b = jax.device_put(jax.random.normal(keys[1], (size, size), jnp.float32) / size**0.5, dev)
        matmul(a, b).block_until_ready()  # compiles
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        count = max(1, int(0.3 / max(time.perf_counter() - t0, 1e-6)))  # about 0.3 s per repetition
        rates = []
        for _ in range(repeats):
            c = a
            t0 = time.perf_counter()
            for _ in range(count):
                c = matmul(c, b)
            c.block_until_ready()
            rates.append(2 * size**3 * count / (time.perf_counter() - t0))
        platform = "cpu" if dev.platform == "cpu" else "gpu"
        out[platform] = {
            "flop_per_s": statistics.median(rates),
            "device": dev.platform if platform == "cpu" else f"{dev.platform} ({dev.device_kind})",
            "threads": _cores() if platform == "cpu" else None,
            "size": size,
            "repeats": repeats,
        }
    return out


def worker_main(spec_json: str) -> None:
    """Subprocess entry point: runs one spec and writes its result as JSON to spec["out"]."""
    spec = json.loads(spec_json)
    if spec["kind"] == "matmul":
        result = measure_matmul(spec["size"], spec["repeats"])
    else:
        baseline = {}
        runner = SETUPS[spec["framework"]](spec, lambda: baseline.setdefault("rss", _proc_status_mib("VmRSS")))
        per_step = time_runner(runner, spec["warmup"], spec["steps"], spec["repeats"])
        peak = _proc_status_mib("VmHWM")
        seconds = statistics.median(per_step)
        result = {
            "ms_per_step": 1e3 * seconds,
            "ms_per_step_all": [1e3 * s for s in per_step],
            "samples_per_s": spec["batch"] / seconds,
            "rss_peak_mib": peak,
            "rss_added_mib": peak - baseline["rss"] if peak and baseline.get("rss") else None,
            "device_peak_mib": runner.device_peak_mib(),
            **{k: getattr(runner, k) for k in ("device", "platform", "threads", "variant", "versions")},
        }
    Path(spec["out"]).write_text(json.dumps(result))
