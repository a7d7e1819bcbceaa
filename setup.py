"""dept_jax: DEPT (Decoupled Embeddings for Pre-Training) in JAX."""
from setuptools import find_packages, setup

setup(
    name="dept_jax",
    version="0.1.0",
    description="DEPT: one shared transformer body, per-source embeddings, rare outer syncs (JAX)",
    packages=find_packages(include=["dept_jax", "dept_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.1,<0.11",
        "flax>=0.12.6,<0.13",
        "optax>=0.2.6,<0.3",
        "orbax-checkpoint>=0.12.6,<0.13",
        "sentencepiece>=0.2.1,<0.3",
        "tensorflow-datasets>=4.9.9,<4.10",
        "grain>=0.2.15,<0.3",
        "ml-collections>=1.1,<2",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "tensorboardX>=2.6,<3",
        "tqdm>=4.66,<5",
        "matplotlib>=3.8,<4",
        "pyarrow>=14",
        "safetensors>=0.8,<0.9",
        "tokenizers>=0.21,<1",  # an existing Hugging Face tokenizer.json
        "etils[epath]>=1.7",  # source paths, gs:// included
        "fsspec>=2023.1",  # an object's version (gs://, s3://) for the token cache's key
        "scipy>=1.11",  # the study's t intervals
        "ml_dtypes>=0.5",  # bfloat16 tensors in the HF export
        "huggingface_hub>=0.23,<3",  # the HF export's safetensors shards and model card
        "protobuf>=5.28",  # sentencepiece's own schema, read by the HF export
    ],
    extras_require={
        "test": ["pytest>=8,<10", "wandb>=0.31,<0.32"],
        "wandb": ["wandb>=0.31,<0.32"],  # log.wandb=offline|online
        "gcs": ["gcsfs>=2024.2"],  # sources on gs:// (read through etils.epath and fsspec)
        # Only the export parity test needs these; the export itself is torch-free.
        "hf": ["torch==2.13.0", "transformers>=5.20,<6"],
    },
)
