"""`python -m vae_fast ...` (also what `torchrun -m vae_fast train ...` runs)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
