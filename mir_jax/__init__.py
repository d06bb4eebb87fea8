"""mir-jax: large vision-language models in JAX/Flax, and the Modality Integration Rate."""

__version__ = "0.1.0"
