"""`vae-fast train`: trains the Kingma & Welling VAE on MNIST and writes its metrics, a checkpoint
and PNG grids.

Single process by default; under `torchrun --nproc_per_node=N` (WORLD_SIZE > 1) it runs with
DistributedDataParallel (gloo on the CPU, nccl on CUDA): each rank trains on its shard
(DistributedSampler), the reported metrics are all-reduced over the ranks, only rank 0 prints
and writes files.

Reproducible: the same config (seed included) on the same machine gives the same metrics.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from . import reference
from ._outputs import StagedOutputs
from .models import DECODERS, VAE, ReferenceOps

if TYPE_CHECKING:  # imported where used: .data needs numpy, of the `cli` extra (`vae-fast info` does not)
    from . import data as data_mod

DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("off", "default", "reduce-overhead")  # reduce-overhead: CUDA graphs of fwd and bwd
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"
SAMPLES_FILE = "samples.png"
RECONSTRUCTIONS_FILE = "reconstructions.png"
EVAL_BATCH = 500  # test neg-ELBO batch
IW_BATCH = 100  # images per importance-sampling batch (x num_samples decoder rows, in chunks of 50)
OBJECTIVES = ("elbo", "iwae")
ESTIMATORS = ("iwae", "stl", "dreg")  # of --objective iwae: vae_fast.negative_iwae_bound


MAX_INT = 2**63 - 1  # integer options (seed included) fit an int64: torch seeds, islice, sizes
# Adam's update lr / (1 - beta1^t) <= 10 lr is a float32 scalar: above ~3e37 torch raises an overflow
# error mid-step; 1e30 (absurd for any run) keeps that a clean option error
MAX_LR = 1e30
MAX_THREADS = 1024  # a sanity bound: torch.set_num_threads takes a C int, and each thread is real


class ConfigError(ValueError):
    """A bad training option; the message names the option (the CLI prints it as one line)."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite (the CLI prints it as one line, exit status 2:
    like a bad option, the fix is in the command line, usually a lower --lr)."""


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    latent: int = 20
    hidden: int = 400
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    out: str = os.path.join("runs", "latest")
    decoder: str = "bernoulli"
    data_dir: str | None = None
    iw_samples: int = 200
    backend: str = "reference"
    threads: int | None = None  # torch CPU threads per process; None: the cores / processes
    quiet: bool = False
    compile: str = "off"  # torch.compile the model's training forward (and its backward) with this mode
    objective: str = "elbo"  # "iwae": the importance-weighted bound with k samples (issue 12)
    k: int = 1
    estimator: str = "iwae"

    def validate(self) -> "TrainConfig":
        for name in ("epochs", "batch_size", "latent", "hidden", "iw_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_INT:
                raise ConfigError(f"--{name.replace('_', '-')}: expected a positive integer below 2**63, "
                                  f"got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or not 0 < self.threads <= MAX_THREADS):
            raise ConfigError(f"--threads: expected an integer in 1..{MAX_THREADS}, got {self.threads!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) \
                or not 0 < self.lr <= MAX_LR:
            raise ConfigError(f"--lr: expected a positive number at most {MAX_LR:g}, got {self.lr!r}")
        # below 2**63: with the per-rank offsets added in evaluate/test_log_px it stays below
        # 2**64, the largest seed torch takes
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_INT:
            raise ConfigError(f"--seed: expected a non-negative integer below 2**63, got {self.seed!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device: expected one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"--compile: expected one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective: expected one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k <= 0:
            raise ConfigError(f"--k: expected a positive integer, got {self.k!r}")
        if self.objective == "elbo" and self.k != 1:
            raise ConfigError(f"--k {self.k}: needs --objective iwae (the ELBO takes one sample)")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"--estimator: expected one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"--decoder: expected one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if not isinstance(self.backend, str) or not self.backend:
            raise ConfigError(f"--backend: expected a backend name, got {self.backend!r}")
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            raise ConfigError(f"--data-dir {self.data_dir}: no such directory")
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError(f"--out: expected a directory name, got {self.out!r}")
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ConfigError(f"--out {self.out}: exists and is not a directory")
        return self


# ------------------------------------------------------------------------------ environment
@dataclass
class Dist:
    """Where this process stands: rank / world size / device (world_size 1: no torch.distributed)."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we initialised the process group, so we destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device cuda: CUDA is not available (torch {torch.__version__}, "
                              f"{torch.cuda.device_count()} GPUs visible); use --device cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup_distributed(device_name: str) -> Dist:
    """torch.distributed when launched by torchrun (WORLD_SIZE > 1) or already initialised."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Dist(rank, world, local, resolve_device(device_name, local), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, 0, resolve_device(device_name), owns_group=False)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(device_name, local)
    if device.type == "cuda":
        # resolve_device wraps local ranks around the visible GPUs; NCCL refuses two ranks on one
        # GPU (or worse, hangs): refuse it here, with the fix
        gpus = torch.cuda.device_count()
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", local + 1))
        if max(per_node, local + 1) > gpus:
            raise ConfigError(f"--device {device_name}: {max(per_node, local + 1)} processes on this node "
                              f"but {gpus} GPU{'s' if gpus != 1 else ''} visible; NCCL needs one GPU per "
                              f"process: use torchrun --nproc_per_node={gpus} (or --device cpu)")
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local, device, owns_group=True)


def set_threads(config: TrainConfig, env: Dist) -> int:
    if config.threads is not None:
        n = config.threads
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
        n = max(1, cores // max(1, local_world))
    torch.set_num_threads(n)
    return n


def build_ops(backend: str, device: torch.device, latent: int):
    """ReferenceOps for 'reference'; otherwise vae_fast.models.FusedOps(backend), probed once on
    `device` so that a backend that cannot run here fails now with a one-line message."""
    if backend == "reference":
        return ReferenceOps()
    try:
        from .models import FusedOps
    except ImportError:
        raise ConfigError(f"--backend {backend}: the fused ops are not available in this build "
                          "(vae_fast.models.FusedOps is missing); use --backend reference") from None
    try:
        ops = FusedOps(backend)
    except Exception as e:  # an unknown name
        raise ConfigError(f"--backend {backend}: {_first_line(e)}") from None
    try:
        # a probe on tiny tensors, with a private generator (the global RNG stays untouched)
        gen = torch.Generator(device=device).manual_seed(0)
        mu = torch.zeros(2, latent, device=device)
        ops.sample_and_kl(mu, torch.zeros_like(mu), generator=gen)
        ops.bernoulli_nll(torch.zeros(2, 3, device=device), torch.full((2, 3), 0.5, device=device))
    except Exception as e:  # any failure of an optional backend -> one clean line
        raise ConfigError(f"--backend {backend}: cannot run on {device}: {_first_line(e)}") from None
    return ops


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------------------- training
def _all_reduce(values: list, env: Dist) -> list[float]:
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=env.device) for v in values])
    if env.distributed:
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(model: VAE, images: torch.Tensor, env: Dist, seed: int) -> dict:
    """Test neg-ELBO (and its two terms), nats per image, over this rank's shard, all-reduced.
    The same eps every call (a generator seeded from `seed`), so epochs are comparable."""
    gen = torch.Generator(device=env.device).manual_seed(seed + 1_000_003 * (env.rank + 1))
    shard = images[env.rank::env.world_size]
    sums = torch.zeros(3, dtype=torch.float64, device=env.device)
    was_training = model.training
    model.eval()
    for start in range(0, shard.shape[0], EVAL_BATCH):
        neg_elbo, rec, kl = model(shard[start:start + EVAL_BATCH], generator=gen)
        sums += torch.stack([neg_elbo.sum(), rec.sum(), kl.sum()]).double()
    model.train(was_training)
    total, rec, kl, n = _all_reduce([sums[0], sums[1], sums[2], float(shard.shape[0])], env)
    return {"neg_elbo": total / n, "rec": rec / n, "kl": kl / n}


class IWAEObjective(torch.nn.Module):
    """The training loss of --objective iwae: minus the importance-weighted bound with k samples
    per image, per image (vae_fast.negative_iwae_bound on the model's backend). A module, so that
    DDP and torch.compile wrap it like the model; returns (loss, None, None) like VAE.forward."""

    def __init__(self, model: VAE, k: int, estimator: str):
        super().__init__()
        self.model, self.k, self.estimator = model, k, estimator
        self.backend = getattr(model.ops, "backend", "reference")

    def forward(self, x: torch.Tensor):
        from . import functional

        model, k, B = self.model, self.k, x.shape[0]
        mu, logvar = model.encode(x)
        z = functional.reparameterize(mu, logvar, num_samples=k, backend=self.backend)
        target = x.reshape(B, -1).repeat(k, 1)
        log_px = -model.reconstruction_nll(model.decode(z.reshape(k * B, -1)), target).reshape(k, B)
        loss = functional.negative_iwae_bound(log_px, z, mu, logvar, estimator=self.estimator,
                                              reduction="none", backend=self.backend)
        return loss, None, None


@torch.no_grad()
def test_log_px(model: VAE, images: torch.Tensor, env: Dist, num_samples: int, seed: int) -> float:
    """Importance-sampled log p(x), mean over the test set: reference.log_marginal_likelihood on
    the reference backend, else its fused twin vae_fast.iwae.log_marginal_likelihood."""
    from . import iwae

    gen = torch.Generator(device=env.device).manual_seed(seed + 2_000_003 * (env.rank + 1))
    shard = images[env.rank::env.world_size]
    total = torch.zeros((), dtype=torch.float64, device=env.device)
    backend = getattr(model.ops, "backend", "reference")
    model.eval()
    for start in range(0, shard.shape[0], IW_BATCH):
        x = shard[start:start + IW_BATCH]
        if backend == "reference":
            lp = reference.log_marginal_likelihood(model, x, num_samples, generator=gen)
        else:
            lp = iwae.log_marginal_likelihood(model, x, num_samples, generator=gen, backend=backend)
        total += lp.double().sum()
    s, n = _all_reduce([total, float(shard.shape[0])], env)
    return s / n


def train(config: TrainConfig, *, stdout=None) -> dict:
    """Trains and writes the outputs (rank 0); returns the metrics dict (the one in metrics.json)
    on every rank. Raises ConfigError / data.DataError on bad options or data."""
    from . import data as data_mod

    t_start = time.perf_counter()
    config = dataclasses.replace(config).validate()
    stdout = stdout if stdout is not None else sys.stdout
    # option, --out, backend and data errors come before any process group exists: they stay simple.
    # The writer (rank 0) stages its files next to --out now: an unusable --out fails before training
    staging = StagedOutputs(config.out, ConfigError) if _launch_rank() == 0 else None
    env = None
    try:
        device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
        ops = build_ops(config.backend, device, config.latent)
        dataset = data_mod.load(config.data_dir)
        env = setup_distributed(config.device)
        metrics = _train(config, env, dataset, ops, stdout, t_start, staging)
        if env.distributed:
            dist.barrier()  # no rank tears its connections down while rank 0 still writes
        return metrics
    finally:
        if staging is not None:
            staging.discard()  # after a commit: already gone; else the partial files go
        if env is not None and env.owns_group and dist.is_initialized():
            # DDP's reducer holds the gloo group and can sit in a reference cycle: free it now, or
            # the group's worker threads die at interpreter exit ("terminate called without an
            # active exception", SIGABRT; seen once in CI)
            gc.collect()
            dist.destroy_process_group()


def _launch_rank() -> int:
    """This process's rank before setup_distributed (0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _train(config: TrainConfig, env: Dist, dataset: data_mod.MNIST, ops, stdout, t_start,
           staging: StagedOutputs | None) -> dict:
    from tqdm import tqdm

    from . import data as data_mod

    threads = set_threads(config, env)
    verbose = env.main and not config.quiet

    def say(msg: str) -> None:
        if verbose:
            print(msg, file=stdout, flush=True)

    torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also broadcasts)
    try:
        model = VAE(in_dim=dataset.train.shape[1], hidden=config.hidden, latent=config.latent,
                    decoder=config.decoder, ops=ops).to(env.device)
    except (RuntimeError, MemoryError) as e:  # e.g. --hidden 10**12: the allocator's message
        raise ConfigError(f"--hidden {config.hidden} / --latent {config.latent}: cannot build the model "
                          f"({dataset.train.shape[1]} inputs) on {env.device}: {_first_line(e)}") from None
    torch.manual_seed(config.seed + env.rank)  # training eps: a different stream per rank
    net = model if config.objective == "elbo" else IWAEObjective(model, config.k, config.estimator)
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[env.device.index] if env.device.type == "cuda"
                                      else None)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    step_net = net
    if config.compile != "off":
        # the fused ops are custom ops with fake kernels: the whole forward (and, through AOTAutograd,
        # the backward) is one graph; "reduce-overhead" replays it as a CUDA graph (each replay draws
        # fresh eps: the Philox state comes from torch's generator inside the graph)
        step_net = torch.compile(net, mode=None if config.compile == "default" else config.compile)
    mark_step = config.compile == "reduce-overhead" and env.device.type == "cuda"

    train_images = dataset.train.to(env.device)
    test_images = dataset.test.to(env.device)
    train_set = data_mod.ImageDataset(train_images)
    if env.distributed:
        sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=env.world_size,
                                                      rank=env.rank, shuffle=True, seed=config.seed)
    else:
        sampler = torch.utils.data.RandomSampler(
            train_set, generator=torch.Generator().manual_seed(config.seed))
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                                         collate_fn=data_mod.identity_collate, num_workers=0)

    say(f"vae-fast train: {dataset.source}; device {env.device}"
        f"{f' x {env.world_size} processes (DDP)' if env.distributed else ''}, {threads} CPU threads, "
        f"backend {config.backend}, {config.decoder} decoder, latent {config.latent}, "
        f"hidden {config.hidden}{'' if config.compile == 'off' else f', torch.compile {config.compile}'}")
    history = []
    t_train = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t_epoch = time.perf_counter()
        if env.distributed:
            sampler.set_epoch(epoch)
        net.train()
        neg_elbo_sum, seen = torch.zeros((), dtype=torch.float64, device=env.device), 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
                   file=sys.stderr, dynamic_ncols=True,
                   disable=None if verbose else True)  # None: only when stderr is a terminal
        for x in bar:
            if mark_step:
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
            neg_elbo, _, _ = step_net(x)
            loss = neg_elbo.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            neg_elbo_sum += neg_elbo.detach().sum().double()  # no host sync per step
            seen += x.shape[0]
        bar.close()
        train_sum, train_n = _all_reduce([neg_elbo_sum, float(seen)], env)
        train_neg_elbo = train_sum / train_n
        if not math.isfinite(train_neg_elbo):  # the same all-reduced value on every rank
            raise TrainingDiverged(f"training diverged at epoch {epoch} (loss {train_neg_elbo}); "
                                   "try a lower --lr")
        test = evaluate(model, test_images, env, config.seed)
        seconds = time.perf_counter() - t_epoch
        history.append({"epoch": epoch, "train_neg_elbo": train_neg_elbo,
                        "test_neg_elbo": test["neg_elbo"], "test_rec": test["rec"],
                        "test_kl": test["kl"], "seconds": seconds})
        say(f"epoch {epoch:3d}/{config.epochs}  train neg-ELBO {train_neg_elbo:8.2f}  "
            f"test neg-ELBO {test['neg_elbo']:8.2f} nats/image  "
            f"(rec {test['rec']:.2f} + KL {test['kl']:.2f})  {seconds:.1f}s")
    train_time = time.perf_counter() - t_train

    t_iw = time.perf_counter()
    log_px = test_log_px(model, test_images, env, config.iw_samples, config.seed)
    iw_time = time.perf_counter() - t_iw
    final_neg_elbo = history[-1]["test_neg_elbo"]
    say(f"test log p(x) ~ {log_px:.2f} nats/image (importance sampled, K={config.iw_samples}); "
        f"ELBO {-final_neg_elbo:.2f}, test neg-ELBO {final_neg_elbo:.2f}")

    metrics = {
        "config": dataclasses.asdict(config),
        "data": dataset.describe(),
        "epochs": history,
        "final": {"test_neg_elbo": final_neg_elbo, "test_log_px": log_px,
                  "iw_samples": config.iw_samples},
        "world_size": env.world_size,
        "device": str(env.device),
        "threads": threads,
        "train_time_s": train_time,
        "iw_time_s": iw_time,
        "wall_time_s": None,  # set below, after the files are written
        "torch_version": str(torch.__version__),
    }
    if env.main:
        try:
            write_outputs(model, config, dataset, metrics, t_start, staging.path if staging else None)
            if staging is not None:
                staging.commit()  # all four files appear at once (see StagedOutputs)
        except OSError as e:  # disk full, --out removed meanwhile...: --out is left as it was
            raise ConfigError(f"--out {config.out}: cannot write the outputs: {_first_line(e)}") from None
        for note in metrics.get("notes", []):
            say(f"note: {note}")
        say(f"wrote {os.path.join(config.out, METRICS_FILE)}, {CHECKPOINT_FILE}, {SAMPLES_FILE}, "
            f"{RECONSTRUCTIONS_FILE}; {metrics['wall_time_s']:.1f}s in all")
    else:
        metrics["wall_time_s"] = time.perf_counter() - t_start
    return metrics


# -------------------------------------------------------------------------------- outputs
def write_outputs(model: VAE, config: TrainConfig, dataset: data_mod.MNIST, metrics: dict,
                  t_start: float, directory: str | None = None) -> None:
    """The four files into `directory` (default config.out; train() passes its staging directory)."""
    out = directory if directory is not None else config.out
    os.makedirs(out, exist_ok=True)
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "config": dataclasses.asdict(config), "in_dim": model.in_dim,
                "image_shape": list(dataset.image_shape), "epochs": len(metrics["epochs"]),
                "torch_version": str(torch.__version__)},
               os.path.join(out, CHECKPOINT_FILE))
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(config.seed)
    samples = model.sample(64, generator=gen).cpu()
    originals = dataset.test[:32]
    recons = model.reconstruct(originals.to(device)).cpu()
    shrunk = {SAMPLES_FILE: save_grid(os.path.join(out, SAMPLES_FILE), [samples], dataset.image_shape,
                                      cols=8, titles=["samples from the prior (mean images)"]),
              RECONSTRUCTIONS_FILE: save_grid(os.path.join(out, RECONSTRUCTIONS_FILE), [originals, recons],
                                              dataset.image_shape, cols=4,
                                              titles=["test digits", "reconstructions"])}
    for name, (fy, fx) in shrunk.items():
        if (fy, fx) != (1, 1):
            metrics.setdefault("notes", []).append(
                f"{name}: images of {dataset.image_shape[0]} x {dataset.image_shape[1]} pixels drawn as "
                f"means of {fy} x {fx} pixel blocks (a panel is at most {MAX_PANEL_PX} pixels a side)")
    metrics["wall_time_s"] = time.perf_counter() - t_start
    with open(os.path.join(out, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")


MAX_PANEL_PX = 1024  # a panel's tiled image is at most this many pixels a side (figure size cap)


def _shrink(images: torch.Tensor, fy: int, fx: int) -> torch.Tensor:
    """(n, r, c) -> (n, ceil(r/fy), ceil(c/fx)): means of fy x fx blocks (edge blocks: of what is there)."""
    if (fy, fx) == (1, 1):
        return images
    return torch.nn.functional.avg_pool2d(images[:, None], (fy, fx), ceil_mode=True)[:, 0]


def _tile(images: torch.Tensor, shape: tuple[int, int], cols: int, pad: int = 2):
    """(canvas as a numpy array, (fy, fx)): the images in a grid of `cols` columns, each shrunk by
    block means of fy x fx pixels so that the grid fits MAX_PANEL_PX a side (the figure, and the
    arrays matplotlib draws it with, grow with it: a 1 x 200,000 image would need gigabytes)."""
    n = images.shape[0]
    rows = -(-n // cols)
    fy = max(1, -(-shape[0] * rows // MAX_PANEL_PX))
    fx = max(1, -(-shape[1] * cols // MAX_PANEL_PX))
    images = _shrink(images.reshape(n, *shape), fy, fx)
    rows_img, cols_img = images.shape[1:]
    canvas = torch.full((rows * (rows_img + pad) + pad, cols * (cols_img + pad) + pad), 0.15)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (rows_img + pad), pad + c * (cols_img + pad)
        canvas[y:y + rows_img, x:x + cols_img] = images[i]
    return canvas.numpy(), (fy, fx)


def save_grid(path: str, panels: list[torch.Tensor], shape: tuple[int, int], cols: int,
              titles: list[str]) -> tuple[int, int]:
    """One or more panels of images (N, rows*cols) in [0, 1], side by side, as a PNG (white
    background, dark ink). Returns the block size (fy, fx) the images were shrunk by ((1, 1): none;
    see _tile): the figure is at most about 26 x 27 inches per panel at 100 dpi."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    tiled = [_tile(p.float().clamp(0, 1), shape, cols) for p in panels]
    tiles = [t for t, _ in tiled]
    shrunk = tiled[0][1]
    h, w = tiles[0].shape
    fig = Figure(figsize=(len(tiles) * w / 40 + 0.4, h / 40 + 0.6), dpi=100)
    for i, (tile, title) in enumerate(zip(tiles, titles)):
        ax = fig.add_subplot(1, len(tiles), i + 1)
        ax.imshow(1.0 - tile, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    return shrunk


def load_model(path: str, map_location="cpu", ops=None) -> VAE:
    """The VAE saved in a checkpoint.pt by `vae-fast train` (reference ops unless `ops` given)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    cfg = ckpt["config"]
    model = VAE(in_dim=ckpt["in_dim"], hidden=cfg["hidden"], latent=cfg["latent"],
                decoder=cfg["decoder"], ops=ops)
    model.load_state_dict(ckpt["state_dict"])
    return model
