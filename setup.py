"""Packaging for gdattn: exact categorical functional GD as stacked attention."""

import setuptools

setuptools.setup(
    name="gdattn",
    version="0.1.0",
    description=(
        "Attention blocks that perform exact multi-step functional gradient "
        "descent for in-context learning with categorical outputs."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["gdattn", "gdattn.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10.0",
        "optax>=0.2.3",
        "chex>=0.1.87",
        "absl-py>=2.0",
        "ml-collections>=0.1.1",
        "orbax-checkpoint>=0.6.0",
        "numpy>=1.26",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "hypothesis>=6.100"],
        "notebooks": ["nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29", "nbmake>=1.5"],
        "tfds": ["tensorflow-datasets>=4.9"],
        "cuda12": ["jax[cuda12]"],
    },
)
