"""Fine-tune a tiny, randomly initialised diffusers AutoencoderKL for a few steps with its posterior
on vae_fast's fused kernels (sampling and KL in one kernel forward, one backward). Runs on the CPU in
seconds; nothing is downloaded.

    python examples/diffusers_finetune.py [--steps 20] [--device cpu|cuda]
"""
import argparse

import torch
from diffusers import AutoencoderKL

from vae_fast.integrations import diffusers as vae_fast_diffusers


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    args = parser.parse_args()

    vae_fast_diffusers.patch()  # the two-line switch: every diffusers VAE now uses vae_fast's posterior

    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
                        norm_num_groups=8).to(args.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    images = torch.rand(8, 3, 32, 32, device=args.device) * 2 - 1  # stand-ins for a batch of images

    for step in range(1, args.steps + 1):
        posterior = vae.encode(images).latent_dist        # a vae_fast.DiagonalGaussian
        z = posterior.sample()                             # fused: the KL comes from the same kernel
        recon = vae.decode(z).sample
        rec = torch.nn.functional.mse_loss(recon, images)
        kl = posterior.kl().mean()
        loss = rec + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.5f} (mse {rec.item():.5f}, kl {kl.item():.1f}) "
              f"[{type(posterior).__module__}.{type(posterior).__name__}]")


if __name__ == "__main__":
    main()
