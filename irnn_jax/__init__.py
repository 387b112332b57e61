"""irnn-jax: identity-initialised ReLU RNNs (Le, Jaitly & Hinton, 2015) in JAX/Flax."""

__version__ = "0.1.0"
