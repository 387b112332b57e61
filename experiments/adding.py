"""The adding problem: sum the two marked numbers of a long sequence (MSE).

    python -m experiments.adding [--workdir=DIR]
        [--config=experiments/configs/adding.py:PRESET] [--config.FIELD=VALUE ...]

With no arguments: preset `irnn_150` into runs/adding/irnn_150. The data is
generated, so this runs anywhere. The same command resumes a stopped run.
"""

from experiments import cli

if __name__ == "__main__":
    cli.run_experiment(__doc__, "adding.py", default_preset="irnn_150", experiment="adding")
