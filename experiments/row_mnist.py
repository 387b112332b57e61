"""Row-by-row MNIST (28 steps of 28 pixels) with the Keras tutorials' RNNs.

    python -m experiments.row_mnist [--workdir=DIR]
        [--config=experiments/configs/row_mnist.py:PRESET] [--config.FIELD=VALUE ...]

With no arguments: preset `keras_relu16` into runs/row_mnist/keras_relu16. The
same command on the same workdir resumes from its latest checkpoint.
"""

from experiments import cli

if __name__ == "__main__":
    cli.run_experiment(__doc__, "row_mnist.py", default_preset="keras_relu16", experiment="row_mnist")
