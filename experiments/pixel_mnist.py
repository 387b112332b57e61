"""Pixel-by-pixel MNIST with an IRNN (784 steps of one pixel).

    python -m experiments.pixel_mnist [--workdir=DIR]
        [--config=experiments/configs/pixel_mnist.py:PRESET] [--config.FIELD=VALUE ...]

With no arguments: preset `keras` into runs/pixel_mnist/keras. The same command
on the same workdir resumes from its latest checkpoint. SIGTERM or Ctrl-C
saves a checkpoint and exits 0.
"""

from experiments import cli

if __name__ == "__main__":
    cli.run_experiment(__doc__, "pixel_mnist.py", default_preset="keras", experiment="pixel_mnist")
