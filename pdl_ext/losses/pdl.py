"""Projected Distribution Loss (Delbracio, Talebi & Milanfar, "Projected Distribution Loss for Image
Enhancement", ICCP 2021 / arXiv 2012.09289): 1D Wasserstein distances between the distributions of
CNN activations of the output and the reference image."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._checks import check_images, check_p, check_reduction, is_int, reduce
from .pixel import PIXEL_LOSSES, pixel_loss_per_sample
from ..projection import Projection, projected_distance, random_directions
from .vgg import VGGFeatures

DEFAULT_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
Backbone = Union[str, nn.Module, Callable[[torch.Tensor], Sequence[torch.Tensor]]]


def _check_range(t: torch.Tensor, name: str, lo: float, hi: float, fn: str) -> None:
    # A reference out of range by more than 10 % of the range is a wrong input_range (e.g. 0..255).
    tol = 0.1 * (hi - lo)
    mn, mx = torch.aminmax(t.detach())
    mn, mx = float(mn), float(mx)
    if mn < lo - tol or mx > hi + tol:
        raise ValueError(
            f"{fn}: {name} values must lie in input_range {(lo, hi)} (10% tolerance), got min {mn:.4g}, max {mx:.4g}; "
            f"set input_range to the images' range"
        )


class PDLLoss(nn.Module):
    r"""Projected Distribution Loss: sum over CNN layers of mean 1D Wasserstein distances of activations.

    Images in ``input_range`` are mapped to [0, 1], normalised with the ImageNet mean and std and
    passed through a frozen VGG. For each layer and sample, each channel's activations over
    positions form a distribution (``projection="spatial"``); the loss is the mean over channels of
    :math:`W_p^p` between output and reference distributions, summed over layers with
    ``layer_weights``, plus ``pixel_weight`` times a pixel loss if asked, then reduced over the batch.

    Args:
        backbone: "vgg16", "vgg19", or an ``nn.Module``/callable mapping ``(B, 3, H, W)`` images in
            [0, 1] to a list of feature maps ``(B, C_l, H_l, W_l)`` (then ``layers``/``weights`` are unused).
        layers: VGG layer names (``relu1_2`` ... ``relu5_3``, ``conv*``, ``pool*``).
        layer_weights: one weight per layer (default 1 each), in the order of ``layers`` (whatever
            order the layers are computed in).
        p: 1 (W_1, our default) or 2 (W_2^2).
        projection: "spatial", "channel" or an int K (sliced: K random unit directions per layer,
            seeded by ``seed``, fixed for the module's life until :meth:`resample_directions`).
        normalize: L2-normalise each position's channel vector first (fused into the op).
        weights: VGG weights file (torchvision layout, ``.pth`` or ``.safetensors``); None looks in
            the torch hub cache (and downloads only with ``download=True``).
        pretrained: False gives random VGG weights (for tests and benchmarks).
        pixel_loss: None, "l1", "l2" or "charbonnier", added with ``pixel_weight``.
        input_range: range of the images (e.g. ``(-1, 1)`` or ``(0, 255)``).
        reduction: "mean", "sum" or "none" over the batch.
        check_range: verify the reference lies in ``input_range`` (one host sync per call).

    Shapes:
        x: ``(B, 3, H, W)`` output, y: ``(B, 3, H', W')`` reference (sizes may differ, except with
        ``projection="channel"`` or a pixel loss). Result: scalar, or ``(B,)`` for ``reduction="none"``.

    Example:
        >>> import torch, pdl_ext
        >>> loss = pdl_ext.PDLLoss(pretrained=False, layers=("relu1_2", "relu2_2"))
        >>> x = torch.rand(2, 3, 32, 32, requires_grad=True)
        >>> value = loss(x, torch.rand(2, 3, 32, 32))
        >>> value.backward(); x.grad.shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        backbone: Backbone = "vgg16",
        layers: Sequence[str] = DEFAULT_LAYERS,
        layer_weights: Optional[Sequence[float]] = None,
        p: int = 1,
        projection: Projection = "spatial",
        normalize: bool = False,
        weights: Union[str, Path, None] = None,
        pixel_loss: Optional[str] = None,
        pixel_weight: float = 1.0,
        input_range: Tuple[float, float] = (0.0, 1.0),
        reduction: str = "mean",
        *,
        pretrained: bool = True,
        download: bool = False,
        seed: int = 0,
        check_range: bool = True,
    ) -> None:
        super().__init__()
        fn = "PDLLoss"
        self.p = check_p(p, fn)
        self.reduction = check_reduction(reduction, fn)
        if not (projection in ("spatial", "channel") or (is_int(projection) and projection > 0)):
            raise ValueError(f"{fn}: projection must be 'spatial', 'channel' or a positive int, got {projection!r}")
        if pixel_loss is not None and pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"{fn}: pixel_loss must be None or one of {PIXEL_LOSSES}, got {pixel_loss!r}")
        if len(tuple(input_range)) != 2:
            raise ValueError(f"{fn}: input_range must be (low, high), got {tuple(input_range)}")
        lo, hi = (float(v) for v in input_range)
        if not hi > lo:
            raise ValueError(f"{fn}: input_range must be (low, high) with high > low, got {tuple(input_range)}")
        if isinstance(backbone, str):
            if backbone not in ("vgg16", "vgg19"):
                raise ValueError(f"{fn}: backbone must be 'vgg16', 'vgg19', an nn.Module or a callable, got {backbone!r}")
            backbone = VGGFeatures(backbone, layers, weights=weights, pretrained=pretrained, download=download)
            num_layers = len(backbone.layers)
        elif isinstance(backbone, VGGFeatures):
            num_layers = len(backbone.layers)
        elif callable(backbone):
            num_layers = None  # known at the first call
        else:
            raise TypeError(f"{fn}: backbone must be 'vgg16', 'vgg19', an nn.Module or a callable, got {type(backbone).__name__}")
        if isinstance(backbone, nn.Module):
            backbone.requires_grad_(False)
            backbone.eval()
        if layer_weights is not None:
            layer_weights = [float(w) for w in layer_weights]
            if num_layers is not None and len(layer_weights) != num_layers:
                raise ValueError(f"{fn}: layer_weights needs one weight per layer ({num_layers}), got {len(layer_weights)}")
        self.backbone = backbone
        self.layer_weights = layer_weights
        self.projection = projection
        self.normalize = bool(normalize)
        self.pixel_loss = pixel_loss
        self.pixel_weight = float(pixel_weight)
        self.input_range = (lo, hi)
        self.seed = int(seed)
        self.check_range = bool(check_range)
        self._directions: Dict[Tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def train(self, mode: bool = True) -> "PDLLoss":
        super().train(mode)
        if isinstance(self.backbone, nn.Module):
            self.backbone.eval()  # frozen: never switched back to training
        return self

    def resample_directions(self) -> None:
        """Draws new sliced-projection directions (only meaningful for an integer ``projection``)."""
        self.seed += 1
        self._directions.clear()

    def directions(self, layer: int, channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The ``(K, channels)`` unit directions of ``layer`` (sliced projection), cached per device."""
        key = (layer, torch.device(device), dtype)
        if key not in self._directions:
            self._directions[key] = random_directions(int(self.projection), channels, self.seed * 1000 + layer, device, dtype)
        return self._directions[key]

    def _weights_in_feature_order(self) -> Optional[Sequence[float]]:
        # layer_weights follow the names they are listed with; a VGG backbone yields its maps in depth
        # order (iter_features), which differs from the order of `layers` when those are not sorted.
        if self.layer_weights is None or not isinstance(self.backbone, VGGFeatures):
            return self.layer_weights
        by_name = dict(zip(self.backbone.layers, self.layer_weights))
        return [by_name[name] for name in self.backbone.depth_layers]

    def _features(self, img: torch.Tensor) -> Iterator[torch.Tensor]:
        if isinstance(self.backbone, VGGFeatures):
            return self.backbone.iter_features(img)  # layer by layer: maps are dropped as they are used
        feats = self.backbone(img)
        if isinstance(feats, torch.Tensor):
            feats = [feats]
        return iter(list(feats))

    def _check_backbone_input(self, x: torch.Tensor, y: torch.Tensor, fn: str) -> None:
        weight = next(self.backbone.parameters())
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"{fn}: x must have the backbone's dtype ({weight.dtype}; convert with .to()), got {x.dtype}")
        need = self.backbone.min_size  # every max-pool of the kept layers, a final pool5 included
        for name, t in (("x", x), ("y", y)):
            if min(t.shape[-2:]) < need:
                raise ValueError(f"{fn}: {name} must be at least {need}x{need} for layer {self.backbone.depth_layers[-1]}, "
                                 f"got {tuple(t.shape[-2:])}")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fn = "PDLLoss"
        check_images(fn, x, y, same_batch_and_channels=True, nonempty=True)
        lo, hi = self.input_range
        if self.check_range:
            _check_range(y, "y", lo, hi, fn)
        if isinstance(self.backbone, VGGFeatures):
            self._check_backbone_input(x, y, fn)
        xs, ys = (x - lo) / (hi - lo), (y - lo) / (hi - lo)
        total = None
        with torch.no_grad():
            fy_iter = self._features(ys)
        fx_iter = self._features(xs)
        layer_weights = self._weights_in_feature_order()
        layer = 0
        while True:
            fx = next(fx_iter, None)
            with torch.no_grad():
                fy = next(fy_iter, None)
            if fx is None or fy is None:
                if (fx is None) != (fy is None):
                    raise ValueError("PDLLoss: the backbone returned different numbers of maps for x and y")
                break
            dirs = None if isinstance(self.projection, str) else self.directions(layer, fx.shape[1], fx.device, fx.dtype)
            d = projected_distance(fx, fy, self.p, self.projection, self.normalize, directions=dirs).mean(1)
            w = 1.0 if layer_weights is None else layer_weights[layer]
            total = d * w if total is None else total + d * w
            layer += 1
        if self.layer_weights is not None and layer != len(self.layer_weights):
            raise ValueError(f"PDLLoss: layer_weights has {len(self.layer_weights)} weights but the backbone gave {layer} maps")
        if total is None:
            raise ValueError("PDLLoss: the backbone returned no feature maps")
        total = total.float() if total.dtype in (torch.float16, torch.bfloat16) else total
        if self.pixel_loss is not None:
            total = total + self.pixel_weight * pixel_loss_per_sample(xs, ys, self.pixel_loss).to(total.dtype)
        return reduce(total, self.reduction)

    def extra_repr(self) -> str:
        return (f"p={self.p}, projection={self.projection!r}, normalize={self.normalize}, "
                f"layer_weights={self.layer_weights}, pixel_loss={self.pixel_loss!r}, pixel_weight={self.pixel_weight}, "
                f"input_range={self.input_range}, reduction={self.reduction!r}")
