"""Fields shared by every MNIST-family experiment, with their defaults.

Each preset starts from `base_config()` and changes what its source did.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "custom"  # preset name; the default workdir is runs/<experiment>/<name>

    # Data.
    c.dataset = "mnist"  # mnist or fashion_mnist
    c.data_dir = ""  # folder with the four IDX files (plain or .gz); empty: data_source decides
    c.data_source = "auto"  # tfds, embedded (the shipped MNIST), download, or auto: the first that has the data
    c.tfds_data_dir = ""  # where TFDS keeps prepared data; empty: $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.task = "pixel"  # pixel (784 steps x 1), permuted (pixel, one fixed permutation) or row (28 steps x 28)
    c.permutation_seed = 0  # seed of the fixed permutation of the permuted task
    c.shuffle = True  # False: take the training set in order, wrapping around
    c.input_mean = 0.0  # pixels enter as (x / 255 - input_mean) / input_std
    c.input_std = 1.0  # see input_mean (irnn_fast: MNIST's 0.1307 and 0.3081)
    c.validation_size = 0  # training examples held out to choose on (never trained on); 0: none
    c.validation_seed = 0  # seed of the fixed permutation whose first validation_size examples are held out

    # Model.
    c.cell = "irnn"  # irnn, rnn_relu or rnn_tanh (Keras default init), lstm (Keras LSTM)
    c.hidden_size = 100  # recurrent units
    c.recurrent_gain = 1.0  # irnn: recurrent kernel = gain * identity
    c.input_init_std = 0.001  # irnn: input kernel ~ N(0, std)
    c.head_sizes = ()  # dense layers between the last state and the logits
    c.head_activation = "sigmoid"  # activation of the head_sizes layers
    c.recurrence = "scan"  # scan, fused, native (CPU) for any cell; pallas (GPU, no LSTM); auto: native or fused
    c.unroll = 1  # time steps per loop iteration of scan (nn.scan) and fused (simple RNNs); GPUs may gain from 8-16
    c.grad_chunk_rows = -1  # rows a device differentiates at once, gradients of the chunks summed; -1: auto (32 native)

    # Optimiser.
    c.optimizer = "rmsprop"  # rmsprop, adam (both with Keras constants) or sgd
    c.learning_rate = 1e-6  # peak learning rate of the schedule
    c.clip_norm = 1.0  # global-norm clipping; 0 turns it off
    c.lr_schedule = "constant"  # constant; cosine: warm-up, then a cosine to 0 at the last step; step: see lr_step_*
    c.warmup_steps = 0  # linear warm-up of the cosine and step schedules
    c.lr_step_epochs = (100,)  # step schedule: the rate is multiplied by lr_step_factor after each of these epochs
    c.lr_step_factor = 0.1  # step schedule: e.g. 0.1 (divide by 10) or 0.3 (by 3.33)
    c.recurrent_lr_scale = 1.0  # the recurrent kernel's updates times this: its own learning rate
    c.update_clip_norm = 0.0  # clips the global norm of the update, after the optimiser; 0 turns it off
    c.ema_decay = 0.0  # > 0: evaluate a moving average of the weights with this decay (e.g. 0.999); 0: off
    c.skip_spike_factor = 0.0  # > 1: skip a step whose gradient norm is above factor x its running mean; 0: off

    # Length of the run.
    c.batch_size = 32  # the last batch of an epoch is partial, as in Keras (masked, not dropped)
    c.num_epochs = 200  # length of the run in passes over the training set
    c.num_train_steps = 0  # when > 0, the run's length in optimiser steps instead of num_epochs (shorter or longer)
    c.seed = 0  # initial parameters and the per-epoch data order

    # Sweeps: train every combination together, e.g. "learning_rate=1e-6,1e-5 seed=0,1".
    c.sweep = ""  # "FIELD=V1,V2 ...", FIELD in seed, learning_rate, clip_norm, recurrent_gain, input_init_std

    # Reporting and checkpoints.
    c.eval_every_steps = 1875  # full test set; also at the last step
    c.eval_offset = 0  # evaluate at steps offset + k * eval_every_steps
    c.eval_batch_size = 1000  # test examples per evaluation batch (the metric does not depend on it)
    c.checkpoint_every_steps = 1875  # also at the last step and on SIGTERM/SIGINT
    c.checkpoint_every_seconds = 0.0  # also when this long has passed since the last save (Colab, spot VMs); 0: off
    c.max_checkpoints_to_keep = 3  # older checkpoints are deleted
    c.steps_per_call = 25  # optimiser steps per jitted call; the host checks the loss between calls
    c.progress_bar = True  # tqdm bar with rate and time left; False: one line per evaluation
    return c
