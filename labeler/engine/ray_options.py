"""`--engine ray`'s options, apart from the engine: `stepdpo label/generate/eval --help` builds its
parser from :class:`RayOptions` without importing the engine (and with it the run folder, pyarrow
and the runner), and only ``--engine ray`` imports Ray itself (:func:`import_ray`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.errors import UserError

RAY_HINT = "pip install 'stepwise-dpo[ray]'"


@dataclass
class RayOptions:
    """Where and how wide to run (`stepdpo label --engine ray`)."""

    ray_address: str | None = field(
        default=None, metadata={"help": "Ray cluster to join: 'auto' (a cluster started on this node with "
                                        "`ray start`), HOST:PORT or ray://HOST:PORT (default: start a local "
                                        "one-node Ray)", "metavar": "ADDR"})
    num_workers: int = field(default=1, metadata={"help": "--engine ray: actors, each holding one copy of the "
                                                          "model"})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "--engine ray: GPUs per actor (0 on a CPU "
                                                                  "cluster; 1 for one model per GPU)"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "--engine ray: CPUs per actor"})
    ray_batch_size: int = field(default=64, metadata={"help": "--engine ray: rows per Ray task (the judge "
                                                               "splits them into its own forward batches)"})


def import_ray() -> Any:
    """Ray, or one line naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise UserError(f"--engine ray needs Ray, which is not installed ({RAY_HINT})") from exc
    return ray


def check_options(options: RayOptions) -> None:
    if options.num_workers < 1:
        raise UserError("--num-workers must be at least 1")
    if options.gpus_per_worker < 0 or options.cpus_per_worker <= 0:
        raise UserError("--gpus-per-worker must be >= 0 and --cpus-per-worker > 0")
    if options.ray_batch_size < 1:
        raise UserError("--ray-batch-size must be at least 1")
