"""disent's beta-VAE training step as a timing server; runs inside .venv-disent (never imported by untwine).

    .venv-disent/bin/python benchmarks/disent_train_step.py --npz IMAGES.npz --batch-size 64 \
        --arch dlib --mode trainer --precision 32-true --threads 1 --steps 8 --warmup 5

Protocol (line-based, so that the caller can interleave disent's blocks with its own and compare
each pair under the same machine load): after the warm-up it prints {"ready": ...}; then for each
line "run" on stdin it trains --steps steps and prints {"seconds": wall time of those steps};
"stop" (or end of input) ends training. With --blocks N it runs N blocks on its own instead and
prints {"images_per_second": median, "per_block": [...]}.

The data path is disent's own: ArrayGroundTruthData over the uint8 images (N, 64, 64, 1) with its
ToImgTensorF32 transform, in DisentDataset and a shuffling torch DataLoader (num_workers=0, as
untwine samples in the training process too). BetaVae: beta 4, BCE, loss_reduction mean_sum
(sums over pixels and latents, mean over the batch: untwine's scale), Adam lr 1e-4.

--arch dlib: disentanglement_lib's conv_encoder exactly (4x4 s2 convs, then 2x2 s2 convs: the
  network untwine trains), as a DisentEncoder, with disent's DecoderConv64 (already dlib's
  deconv_decoder). --arch stock: disent's EncoderConv64, which reverts layers 3-4 to 4x4 kernels
  with padding 2 (1600 features into the dense layer): more work per image than dlib's network.
--mode trainer: lightning Trainer.fit, as disent trains (the block is timed inside a callback).
--mode loop: the framework's training_step in a bare Python loop with its own Adam.
--precision bf16-mixed: the Trainer's bf16 plugin, or torch.autocast in the loop.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn


def dlib_encoder_cls():
    from disent.model import DisentEncoder

    class EncoderConv64Dlib(DisentEncoder):
        """disentanglement_lib's conv_encoder (architectures.py): e3/e4 are 2x2 stride-2 convs."""

        def __init__(self, x_shape=(1, 64, 64), z_size=10, z_multiplier=2):
            super().__init__(x_shape=x_shape, z_size=z_size, z_multiplier=z_multiplier)
            c = x_shape[0]
            self.model = nn.Sequential(
                nn.Conv2d(c, 32, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(32, 64, 2, stride=2), nn.ReLU(inplace=True),
                nn.Conv2d(64, 64, 2, stride=2), nn.ReLU(inplace=True),
                nn.Flatten(), nn.Linear(1024, 256), nn.ReLU(inplace=True),
                nn.Linear(256, self.z_total),
            )

        def encode(self, x):
            return self.model(x)

    return EncoderConv64Dlib


def build_framework(arch: str, beta: float, lr: float, latent_dim: int = 10):
    from disent.frameworks.vae import BetaVae
    from disent.model import AutoEncoder
    from disent.model.ae import DecoderConv64, EncoderConv64

    encoder_cls = dlib_encoder_cls() if arch == "dlib" else EncoderConv64
    x_shape = (1, 64, 64)
    model = AutoEncoder(encoder=encoder_cls(x_shape=x_shape, z_size=latent_dim, z_multiplier=2),
                        decoder=DecoderConv64(x_shape=x_shape, z_size=latent_dim))
    cfg = BetaVae.cfg(optimizer="adam", optimizer_kwargs=dict(lr=lr), recon_loss="bce",
                      loss_reduction="mean_sum", beta=beta)
    return BetaVae(model=model, cfg=cfg)


def build_loader(npz: str, batch_size: int, seed: int):
    from disent.dataset import DisentDataset
    from disent.dataset.data import ArrayGroundTruthData
    from disent.dataset.transform import ToImgTensorF32

    with np.load(npz, allow_pickle=False) as f:
        images = f["images"]
    data = ArrayGroundTruthData(images, factor_names=("index",), factor_sizes=(len(images),),
                                transform=ToImgTensorF32())
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(DisentDataset(data), batch_size=batch_size, shuffle=True,
                                       num_workers=0, drop_last=True, generator=generator)


class Blocks:
    """Counts steps; after the warm-up, and after every block of `steps`, asks the controller what next."""

    def __init__(self, warmup: int, steps: int, batch_size: int, blocks: int | None):
        self.warmup, self.steps, self.batch_size, self.blocks = warmup, steps, batch_size, blocks
        self.done, self.t0, self.times = 0, 0.0, []

    def _next(self) -> bool:
        """True to run another block (its clock starts now), False to stop."""
        if self.blocks is not None:
            go = len(self.times) < self.blocks
        else:
            print(json.dumps({"ready": True} if not self.times else {"seconds": self.times[-1]}), flush=True)
            go = sys.stdin.readline().strip() == "run"
        self.t0 = time.perf_counter()
        return go

    def after_step(self) -> bool:
        """Call after each optimisation step; False means stop training."""
        self.done += 1
        if self.done == self.warmup:
            return self._next()
        if self.done > self.warmup and (self.done - self.warmup) % self.steps == 0:
            self.times.append(time.perf_counter() - self.t0)
            return self._next()
        return True


def endless(loader):
    while True:
        yield from loader


def run_loop(framework, loader, blocks: Blocks, precision: str) -> None:
    optimizer = framework.configure_optimizers()
    framework.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    for i, batch in enumerate(endless(loader)):
        with autocast:
            loss = framework.training_step(batch, i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not blocks.after_step():
            return


def run_trainer(framework, loader, blocks: Blocks, precision: str) -> None:
    import lightning.pytorch as pl

    class Timer(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if not blocks.after_step():
                trainer.should_stop = True

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=-1, max_epochs=-1, precision=precision,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Timer()], num_sanity_val_steps=0)
    trainer.fit(framework, loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--npz", required=True, help="uint8 images (N, 64, 64, 1) under key 'images'")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--arch", choices=("dlib", "stock"), default="dlib")
    parser.add_argument("--mode", choices=("trainer", "loop"), default="trainer")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--blocks", type=int, help="run this many blocks alone instead of serving stdin")
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    warnings.filterwarnings("ignore")  # self.log outside a Trainer, lightning tips: noise here
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    framework = build_framework(args.arch, args.beta, lr=1e-4)
    loader = build_loader(args.npz, args.batch_size, args.seed)
    blocks = Blocks(args.warmup, args.steps, args.batch_size, args.blocks)
    (run_trainer if args.mode == "trainer" else run_loop)(framework, loader, blocks, args.precision)
    if args.blocks is not None:
        rates = [args.steps * args.batch_size / t for t in blocks.times]
        print(json.dumps({"images_per_second": statistics.median(rates), "per_block": rates,
                          "params": sum(p.numel() for p in framework.parameters()), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
