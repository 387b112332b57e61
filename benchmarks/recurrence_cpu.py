"""CPU time of one forward+backward pass of the pixel-MNIST IRNN, per `recurrence.final_state` option.

    python -m benchmarks.recurrence_cpu              # the table: scan, and fused per unroll
    python -m benchmarks.recurrence_cpu --profile    # also: where fused's time goes at batch 16 and 512
    python -m benchmarks.recurrence_cpu --backward   # only: fused's two backward forms, batch 16 to 512
    python -m benchmarks.recurrence_cpu --lstm       # only: the LSTM's scan, fused and native gradients
    python -m benchmarks.recurrence_cpu --native_parts  # only: the native kernel's parts beside a bare chain

The step is value_and_grad of softmax cross-entropy of a Dense(10) head on h_T (hidden 100, T = 784,
C = 1), w.r.t. all parameters, jitted; reported is the median of `--reps` timed calls after two
warm-up calls. "pallas" is left out: on CPU it runs in interpret mode, which is not meant to be fast.

One device, one core's matmuls: the batch here is what each device sees when the command line
splits a batch over cores (batch 32 on 2 cores: 16). Measured (jax 0.10.2, 2-core AMD EPYC), ms:
batch 16: scan 21.8, fused 16.6 (unroll 1) / 14.3 (unroll 2; no difference in the real training
step, so the default stays 1). --profile at batch 16: fused 15.5 = forward loop 5.1 + backward
loop 5.6 + dW_rec matmul 3.4 + 1.3 other; a bare chain of 784 dependent (16,100)@(100,100)
matmuls takes 4.0 (63 GFLOP/s), an empty loop step 0.3 us. At batch 512, fused 353, scan 388.
"""

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import chains
from irnn_jax import model, native, recurrence

T, C, H, K = 784, 1, 100, 10


def time_ms(calls: dict, reps: int) -> dict:
    """{name: (median, min) wall ms} of each zero-argument call, after compiling and two warm-up calls.

    Calls are interleaved round-robin, so that load from other jobs on a shared machine hits every
    option alike."""
    for call in calls.values():
        for _ in range(3):
            jax.block_until_ready(call())
    times = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def make_inputs(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {
        "rnn": {
            "kernel": rng.normal(0, 0.001, (C, H)).astype(np.float32),
            "recurrent_kernel": np.eye(H, dtype=np.float32),
            "bias": np.zeros(H, np.float32),
        },
        "head": {"kernel": rng.normal(0, 0.1, (H, K)).astype(np.float32), "bias": np.zeros(K, np.float32)},
    }
    x_BxTxC = rng.uniform(0, 1, (batch, T, C)).astype(np.float32)
    labels_B = rng.integers(0, K, batch)
    return jax.device_put((params, x_BxTxC, labels_B))


def train_grad_fn(recurrence_name: str, unroll: int):
    def loss(params, x_BxTxC, labels_B):
        h_BxH = recurrence.final_state(recurrence_name, params["rnn"], x_BxTxC, "relu", unroll=unroll)
        logits_BxK = h_BxH @ params["head"]["kernel"] + params["head"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B).mean()

    return jax.jit(jax.value_and_grad(loss))


def train_step(recurrence_name: str, unroll: int, batch: int):
    grad_fn, args = train_grad_fn(recurrence_name, unroll), make_inputs(batch)
    return lambda: grad_fn(*args)


def table(batch_sizes, unrolls, reps: int) -> None:
    print(f"{'batch':>6} {'option':>16} {'median ms':>10} {'min ms':>8} {'samples/s':>10}")
    for batch in batch_sizes:
        calls = {"scan": train_step("scan", 1, batch)}
        calls |= {f"fused unroll={u}": train_step("fused", u, batch) for u in unrolls}
        for name, (median, fastest) in time_ms(calls, reps).items():
            print(f"{batch:>6} {name:>16} {median:>10.1f} {fastest:>8.1f} {1e3 * batch / median:>10.0f}", flush=True)


def profile(batch: int, unroll: int, reps: int) -> None:
    """Splits fused's step into its parts and compares them with bare loops and matmuls of the same shapes."""
    rng = np.random.default_rng(0)
    zx_TxBxH = jnp.asarray(rng.normal(0, 0.1, (T, batch, H)), jnp.float32)
    w_HxH = jnp.asarray(np.eye(H) + rng.normal(0, 0.01, (H, H)), jnp.float32)
    # The small-batch form: the input terms zx computed before the loop (identity projection).
    fwd = jax.jit(lambda zx, w: recurrence._loop_forward(zx, lambda z: z, w, "relu", unroll, keep_states=True))
    last = jax.jit(lambda zx, w: recurrence._loop_forward(zx, lambda z: z, w, "relu", unroll, keep_states=False))
    bwd = jax.jit(functools.partial(recurrence._loop_backward, activation="relu", unroll=unroll))
    h_prev_TxBxH, h_last_BxH = fwd(zx_TxBxH, w_HxH)
    n = T * batch

    def matmul_loop(u):
        # T dependent (B, H) @ (H, H) matmuls and nothing else: the floor of one loop.
        f = jax.jit(lambda h, w: jax.lax.scan(lambda h, _: (h @ w, None), h, None, length=T, unroll=u)[0])
        return lambda: f(h_last_BxH, w_HxH)

    empty = jax.jit(lambda h: jax.lax.scan(lambda h, _: (h + 1.0, None), h, None, length=T)[0])
    d_w_rec = jax.jit(lambda a, b: a.reshape(n, H).T @ b.reshape(n, H))
    big = jax.jit(lambda a, w: a.reshape(n, H) @ w)
    double, total = jax.jit(lambda a: 2 * a), jax.jit(jnp.sum)
    calls = {
        "fused step (value_and_grad)": train_step("fused", unroll, batch),
        "scan step (value_and_grad)": train_step("scan", 1, batch),
        "fused forward loop, states kept": lambda: fwd(zx_TxBxH, w_HxH),
        "fused forward loop, final state only": lambda: last(zx_TxBxH, w_HxH),
        "fused backward loop (dz)": lambda: bwd(h_prev_TxBxH, h_last_BxH, h_last_BxH, w_HxH),
        "dW_rec: one (H, T*B) @ (T*B, H) matmul": lambda: d_w_rec(h_prev_TxBxH, zx_TxBxH),
        "T dependent (B,H)@(H,H) in a scan, unroll=1": matmul_loop(1),
        "T dependent (B,H)@(H,H) in a scan, unroll=8": matmul_loop(8),
        "T-step scan of h + 1, no matmul": lambda: empty(h_last_BxH),
        "T independent: one (T*B, H) @ (H, H)": lambda: big(zx_TxBxH, w_HxH),
        "write a new (T, B, H) array: 2 * a": lambda: double(zx_TxBxH),
        "read a (T, B, H) array: sum(a)": lambda: total(zx_TxBxH),
    }
    print(f"\nprofile at batch {batch}, {T} steps, hidden {H}: median (min) ms, median per step")
    for name, (median, fastest) in time_ms(calls, reps).items():
        print(f"  {name:<46} {median:8.2f} ({fastest:7.2f})  {1e3 * median / T:7.1f} us/step", flush=True)


def native_parts(batch_sizes, reps: int) -> None:
    """The native simple-RNN kernel's forward (keeping nothing, keeping its states) and value_and_grad
    beside the bare XLA chain step_ratio times (T dependent relu(h @ W + x_t w), nothing kept), at each batch (per
    device), interleaved. The backward is the difference of value_and_grad and the forward that keeps
    its states. What keeping the states costs, the forward keeping them over the one that does not,
    is memory traffic the chain does not have: (T, B, Hp) floats written, and read back by the backward."""
    if not native.available():
        raise SystemExit(f"--native_parts needs the native kernel: {native._load().reason}")
    print(f"\nnative kernel parts, {T} steps, hidden {H}: median (min) ms; ratios of the min to the chain's min")
    for batch in batch_sizes:
        params, x_BxTxC, _ = make_inputs(batch)
        rnn, x_TxBxC = params["rnn"], jnp.swapaxes(x_BxTxC, 0, 1)

        (w, w_in), chain = chains.bare_chain("irnn", batch, H)
        fns = {
            "bare chain (XLA)": (jax.jit(chain), (w, w_in, x_TxBxC)),
            "native forward, final state only": (
                jax.jit(lambda p, x: native._forward(p, x, False, "relu")[1]),
                (rnn, x_TxBxC),
            ),
            "native forward, states kept": (  # kept inside the call, as in value_and_grad, not returned
                jax.jit(lambda p, x: native._forward(p, x, True, "relu")[1]),
                (rnn, x_TxBxC),
            ),
            "native value_and_grad": (
                jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(native.final_state(p, x, "relu")))),
                (rnn, x_BxTxC),
            ),
        }
        results = time_ms({name: functools.partial(f, *a) for name, (f, a) in fns.items()}, reps)
        chain_min = results["bare chain (XLA)"][1]
        for name, (median, fastest) in results.items():
            ratio = fastest / chain_min
            print(f"  batch {batch:>4} {name:<34} {median:8.2f} ({fastest:7.2f})  {ratio:5.2f}x", flush=True)
        backward = results["native value_and_grad"][1] - results["native forward, states kept"][1]
        name, ratio = "native backward (difference)", backward / chain_min
        print(f"  batch {batch:>4} {name:<34} {'':8} ({backward:7.2f})  {ratio:5.2f}x")


def backward_forms(batch_sizes, reps: int) -> None:
    """Three backward forms of "fused": dz for all steps then one large weight-gradient matmul; the
    weight gradients summed inside the loop step by step; and in blocks of `recurrence.block_steps`
    steps, the form "fused" uses (recurrence.BLOCK_ROWS)."""
    rng = np.random.default_rng(0)
    print(f"\nfused backward at batch B (one device), {T} steps, hidden {H}: median (min) ms")
    for batch in batch_sizes:
        x_TxBxC = jnp.asarray(rng.uniform(0, 1, (T, batch, C)), jnp.float32)
        h_prev_TxBxH = jnp.asarray(np.maximum(rng.normal(0, 0.1, (T, batch, H)), 0), jnp.float32)
        dh_BxH = jnp.asarray(rng.normal(0, 1, (batch, H)), jnp.float32)
        w_in_CxH = jnp.asarray(rng.normal(0, 0.001, (C, H)), jnp.float32)
        w_HxH = jnp.asarray(np.eye(H) + rng.normal(0, 0.01, (H, H)), jnp.float32)
        args = (x_TxBxC, h_prev_TxBxH, h_prev_TxBxH[-1], dh_BxH, w_in_CxH, w_HxH)

        def after_loop(x, h_prev, h_last, dh, w_in, w):
            dz = recurrence._loop_backward(h_prev, h_last, dh, w, "relu", 1).reshape(-1, H)
            return h_prev.reshape(-1, H).T @ dz, x.reshape(-1, C).T @ dz, dz.sum(0)

        def in_blocks(x, h_prev, h_last, dh, w_in, w, block):
            grads, _ = recurrence._loop_backward_blocked(x, h_prev, h_last, dh, w_in, w, "relu", block, 1)
            return grads

        block = recurrence.block_steps(T, batch)
        forms = (
            ("after", after_loop),
            ("in", functools.partial(in_blocks, block=1)),
            ("blocks", functools.partial(in_blocks, block=block)),
        )
        calls = {name: functools.partial(jax.jit(f), *args) for name, f in forms}
        times = time_ms(calls, reps)
        print(
            f"  B={batch:<5} weight gradients after the loop {times['after'][0]:8.1f} ({times['after'][1]:7.1f})"
            f"   inside it step by step {times['in'][0]:8.1f} ({times['in'][1]:7.1f})"
            f"   in blocks of {block} steps {times['blocks'][0]:8.1f} ({times['blocks'][1]:7.1f})",
            flush=True,
        )


def lstm_table(batch_sizes, reps: int) -> None:
    """The LSTM's training gradient (the model as the command line builds it, softmax cross-entropy,
    value_and_grad w.r.t. all parameters), "scan" (`nn.scan` of the cell) beside "fused" and, where
    the kernel is built, "native"."""
    names = ("scan", "fused", "native") if native.available() else ("scan", "fused")
    print(f"\nLSTM({H}), {T} steps: value_and_grad, median (min) ms")
    header = " ".join(f"{n:>16}" for n in names) + " " + " ".join(f"{'scan / ' + n:>15}" for n in names[1:])
    print(f"{'batch':>6} {header}")
    for batch in batch_sizes:
        _, x_BxTxC, labels_B = make_inputs(batch)
        calls = {}
        for name in names:
            net = model.SequenceClassifier(num_outputs=K, cell="lstm", hidden_size=H, recurrence=name)
            params = net.init(jax.random.key(0), x_BxTxC[:1])["params"]

            def loss(params, x_BxTxC, labels_B, net=net):
                logits_BxK = net.apply({"params": params}, x_BxTxC)
                return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B).mean()

            calls[name] = functools.partial(jax.jit(jax.value_and_grad(loss)), params, x_BxTxC, labels_B)
        times = time_ms(calls, reps)
        cells = " ".join(f"{times[n][0]:>8.1f} ({times[n][1]:>5.1f})" for n in names)
        ratios = " ".join(f"{times['scan'][1] / times[n][1]:>14.2f}x" for n in names[1:])
        print(f"{batch:>6} {cells} {ratios}", flush=True)


def main(argv: list[str] | None = None) -> None:
    global T, H
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", default="32,256,1024")
    parser.add_argument("--unrolls", default="1,2,4,8,16")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile_batches", default="16,512", help="batch sizes to --profile (per device)")
    parser.add_argument("--backward", action="store_true", help="only compare fused's two backward forms")
    parser.add_argument("--backward_batches", default="16,64,128,256,512", help="batch sizes for --backward")
    parser.add_argument("--lstm", action="store_true", help="only: the LSTM's scan, fused and native, side by side")
    parser.add_argument(
        "--native_parts", action="store_true", help="only: the native kernel's parts, --batch_sizes per device"
    )
    parser.add_argument("--seq_len", type=int, default=T, help="time steps (smaller only for quick checks)")
    parser.add_argument("--hidden", type=int, default=H, help="hidden units (smaller only for quick checks)")
    args = parser.parse_args(argv)
    T, H = args.seq_len, args.hidden
    if args.lstm:
        lstm_table([int(b) for b in args.batch_sizes.split(",")], args.reps)
        return
    if args.native_parts:
        native_parts([int(b) for b in args.batch_sizes.split(",")], args.reps)
        return
    if args.backward:
        backward_forms([int(b) for b in args.backward_batches.split(",")], args.reps)
        return
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {jax.device_count()} device(s)")
    table([int(b) for b in args.batch_sizes.split(",")], [int(u) for u in args.unrolls.split(",")], args.reps)
    if args.profile:
        for batch in (int(b) for b in args.profile_batches.split(",")):
            profile(batch, recurrence.DEFAULT_UNROLL, args.reps)


if __name__ == "__main__":
    main()
