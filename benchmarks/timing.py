"""The pixel-MNIST training step as the command line runs it, and a timer: what `step_ratio`,
`large_batch` and `gpu_check` time. A module of its own, without command-line flags, so that each can
import it."""

import time


def train_fn(
    batch: int, steps: int, recurrence: str, cell: str = "irnn", grad_chunk_rows: int | None = None, unroll: int = 1
):
    """A zero-argument call running `steps` training steps as the command line does (the keras preset;
    the LSTM: budget_lstm; `grad_chunk_rows`, `unroll`: those config fields, None: the preset's); and
    the devices."""

    from benchmarks.frameworks import synthetic_batch
    from experiments.configs import pixel_mnist
    from irnn_jax import data, loop

    config = pixel_mnist.get_config("budget_lstm" if cell == "lstm" else "keras")
    config.batch_size, config.recurrence = batch, recurrence
    if grad_chunk_rows is not None:
        config.grad_chunk_rows = grad_chunk_rows
    config.unroll = unroll
    split = data.Split(*synthetic_batch(batch))  # a training set of one batch: each step takes all of it
    s = loop.setup(config, dataset=data.Dataset("synthetic", split, split, source="synthetic"))
    idx, mask = s.train_indices(0, steps)
    holder = [s.state]

    def call():
        holder[0] = s.chunk_fn(holder[0], s.train_data, idx, mask)  # the state is donated: keep the newest
        return holder[0]

    return call, s.mesh.size, config.hidden_size


def best_ms(call, calls: int = 1) -> float:
    """Milliseconds a call of `call` takes, the mean of `calls` calls in a row."""
    import jax

    start = time.perf_counter()
    for _ in range(calls):
        out = call()
    jax.block_until_ready(out)
    return 1e3 * (time.perf_counter() - start) / calls
