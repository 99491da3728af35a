"""instructjax: the InstructGPT recipe (SFT -> reward model -> PPO-ptx) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="instructjax",
    version="0.1.0",
    description="InstructGPT recipe (SFT, reward model, PPO-ptx) in JAX/Flax, sharded by logical axes.",
    packages=find_packages(include=["instructjax", "instructjax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6,<0.13",
        "flax>=0.10.6,<0.14",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "numpy>=1.26",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        # torch is pinned by the Makefile to the local CPU wheel before this extra is installed;
        # a range that admits it then installs nothing more.
        "hf": ["transformers>=4.45", "torch>=2.1"],
        # TFDS builds and reads array_record without TensorFlow; tfds imports
        # importlib_resources without declaring it.
        "tfds": ["tensorflow-datasets>=4.9.6", "array-record>=0.5", "importlib_resources"],
        "datasets": ["datasets>=2.19"],
        "dev": [
            "transformers>=4.45",
            "torch>=2.1",
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "tensorflow-datasets>=4.9.6",
            "array-record>=0.5",
            "importlib_resources",
        ],
    },
)
