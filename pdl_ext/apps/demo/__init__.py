"""`pdl-ext demo`: trains a small restoration network with a pixel loss and with distribution losses
on real photographs, then compares them on held-out images (PSNR, SSIM, a texture statistic, speed).

Every loss spec (``--losses "l1,l1+0.1*pdl,mdf"``, see ``pdl_ext.apps.loss_spec``) trains the same residual
CNN from the same initial weights on the same seeded batches of random crops of the training
photographs, for the same number of steps. The held-out photographs are then restored by each network
and written as one PNG grid per image (degraded input | one column per loss | reference, with a zoomed
crop), with ``metrics.json`` and ``metrics.md``.

Losses: Delbracio, Talebi & Milanfar, "Projected Distribution Loss for Image Enhancement", ICCP 2021
(``pdl``); Mustafa et al., "Training a Task-Specific Image Reconstruction Loss", WACV 2022 (``mdf``);
Talebi & Milanfar, "Learned Perceptual Image Enhancement", ICCP 2018 (``nima``).

Example:
    $ pdl-ext demo                                   # denoising, "l1" vs "l1+0.05*pdl", a few minutes on 2 cores
    $ pdl-ext demo --task sr --losses "l1,l1+0.1*pdl,mdf" --steps 1000
    $ torchrun --nproc_per_node 2 -m pdl_ext demo    # the same training with DDP (gloo on the CPU)
"""
from .report import center_crop, format_table, image_metrics, metrics_rows, save_grid, texture_w1, zoom_box
from .runner import DemoConfig, add_arguments, run, run_demo
from .terms import TermContext, build_term, resolve_mdf_weights
from .training import (DEFAULT_LOSSES, TASK_PARAMS, TEST_IMAGES, TRAIN_IMAGES, ResidualRestorer, TrainResult,
                       degrade_for_network, train_restorer, training_batch)

__all__ = ["DEFAULT_LOSSES", "TASK_PARAMS", "TEST_IMAGES", "TRAIN_IMAGES", "DemoConfig", "ResidualRestorer", "TermContext",
           "TrainResult", "add_arguments", "build_term", "center_crop", "degrade_for_network", "format_table",
           "image_metrics", "metrics_rows", "resolve_mdf_weights", "run", "run_demo", "save_grid", "texture_w1",
           "train_restorer", "training_batch", "zoom_box"]
