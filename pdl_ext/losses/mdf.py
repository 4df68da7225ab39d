"""MDF, the multi-scale discriminative feature loss: frozen single-image discriminators as features.

Paper: A. Mustafa, A. Mikhailiuk, D. A. Iliescu, V. Babbar, R. K. Mantiuk, "Training a Task-Specific
Image Reconstruction Loss", WACV 2022 (code: github.com/gfxdisp/mdf). A series of SinGAN critics,
trained adversarially on one image and its task distortions (see ``pdl_ext.train.mdf``), compares a
restored image with its reference through their head, body and tail activations.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .._checks import check_images, check_p, check_reduction, is_int, reduce
from ..projection import projected_distance
from ..io.weights import check_float_tensors, compare_layout, save_state_dict

# Five unpadded 3x3 convolutions: an output pixel sees 11x11 input pixels.
RECEPTIVE_FIELD = 11
DISTANCES = ("mse", "pdl")
# The published loss (gfxdisp/mdf's code) uses the first 8 discriminators of a series (fewer when a series holds fewer).
PAPER_SCALES = 8
# The published series bundled in the package (losses/weights/mdf, the authors' BSD-3-Clause notice
# beside them): name -> file. The authors' Ds_Denoising.pth is byte-identical to Ds_SISR.pth.
PRETRAINED = {"sisr": "Ds_SISR.safetensors", "denoise": "Ds_SISR.safetensors", "jpeg": "Ds_JPEG.safetensors"}


class ConvBlock(nn.Sequential):
    """3x3 convolution without padding, BatchNorm, LeakyReLU(0.2): the block of SinGAN's networks."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(0.2)


class MDFDiscriminator(nn.Module):
    """A SinGAN critic (``WDiscriminator``): head block, three body blocks, 3x3 conv tail to one channel.

    Args:
        width: channels of the head and body blocks (the published series uses 32, 64 and 128).

    Shapes: ``(B, 3, H, W)`` in, ``(B, 1, H - 10, W - 10)`` critic map out (H, W >= 11).

    Example:
        >>> import torch
        >>> from pdl_ext.losses.mdf import MDFDiscriminator
        >>> [f.shape[1:] for f in MDFDiscriminator(32).features(torch.rand(1, 3, 16, 16))]
        [torch.Size([32, 14, 14]), torch.Size([32, 8, 8]), torch.Size([1, 6, 6])]
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        if not is_int(width) or width < 1:
            raise ValueError(f"MDFDiscriminator: width must be a positive int, got {width!r}")
        self.width = width
        self.head = ConvBlock(3, width)
        self.body = nn.Sequential(OrderedDict((f"block{i}", ConvBlock(width, width)) for i in (1, 2, 3)))
        self.tail = nn.Conv2d(width, 1, kernel_size=3)

    def features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The head, body and tail outputs, the three activations the loss compares."""
        head = self.head(x)
        body = self.body(head)
        return head, body, self.tail(body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(self.head(x)))


def default_widths(count: int) -> List[int]:
    """SinGAN's widths per scale, coarse to fine: 32, doubled every 4 scales, at most 128."""
    return [min(32 * 2 ** (k // 4), 128) for k in range(count)]


def discriminators_state_dict(discriminators: Iterable[nn.Module]) -> Dict[str, torch.Tensor]:
    """The flat ``"{k}.{name}"`` state dict of a discriminator series (the layout of the bundled published files)."""
    return {
        f"{k}.{name}": t.detach().to("cpu").contiguous()
        for k, d in enumerate(discriminators)
        for name, t in d.state_dict().items()
    }


def save_discriminators(discriminators: Iterable[nn.Module], path: Union[str, os.PathLike]) -> None:
    """Writes a discriminator series as safetensors (atomically), loadable by ``MDFLoss.from_file``."""
    save_state_dict(discriminators_state_dict(discriminators), path)


def pretrained_path(name: str) -> Path:
    """The bundled safetensors file of a published series (``name`` a key of ``PRETRAINED``).

    A path inside the installed package, next to this module; ``MDFLoss.from_pretrained`` loads it.
    """
    return Path(__file__).resolve().parent / "weights" / "mdf" / PRETRAINED[name]


def _resolve_num_scales(num_scales: Optional[int], count: int) -> Optional[int]:
    # None: the published code's 8, or every discriminator of a shorter series; explicit values are checked by the caller.
    return min(PAPER_SCALES, count) if num_scales is None else num_scales


def discriminators_from_state_dict(
    state: Dict[str, torch.Tensor], fn: str = "MDFLoss.from_file", source: Optional[str] = None
) -> nn.ModuleList:
    """Builds the series a ``"{k}.{name}"`` state dict describes; widths and count come from the tensors.

    Every key, shape and dtype is checked before any module is built, so a crafted width allocates
    nothing; integer, bool or complex tensors for float parameters are refused, not cast. Error
    messages start with ``fn`` and, when given, ``source`` (where ``state`` was read, e.g. a file).
    """
    where = f"{fn}: {source}:" if source is not None else f"{fn}:"
    indices = set()
    for key in state:
        m = re.match(r"(\d+)\.", key)
        if m is None:
            raise ValueError(f"{where} keys must look like '{{k}}.head.conv.weight', got {key!r}")
        indices.add(int(m.group(1)))
    if not indices or sorted(indices) != list(range(len(indices))):
        raise ValueError(f"{where} discriminator indices must be 0..n-1, got {sorted(indices)}")
    widths = []
    for k in range(len(indices)):
        head = state.get(f"{k}.head.conv.weight")
        if head is None or head.dim() != 4 or tuple(head.shape[1:]) != (3, 3, 3) or head.shape[0] < 1:
            got = None if head is None else tuple(head.shape)
            raise ValueError(f"{where} {k}.head.conv.weight must have shape (W, 3, 3, 3), got {got}")
        width = int(head.shape[0])
        sub = {key[len(f"{k}."):]: t for key, t in state.items() if key.startswith(f"{k}.")}
        with torch.device("meta"):  # the expected shapes and dtypes, without allocating the weights
            expected = MDFDiscriminator(width).state_dict()
        layout = compare_layout(sub, expected)
        missing, unexpected = sorted(layout.missing), layout.unexpected
        if missing or unexpected:
            raise ValueError(
                f"{where} discriminator {k} does not have the MDF layout: "
                f"missing {missing[:4]}, unexpected {unexpected[:4]}"
            )
        for name, want, got in layout.wrong_shapes[:1]:
            raise ValueError(f"{where} {k}.{name} must have shape {want} (width {width}), got {got}")
        floats = [f"{k}.{n}" for n, t in expected.items() if t.is_floating_point()]
        check_float_tensors(state, floats, fn, "the state dict" if source is None else source)
        widths.append(width)
    discriminators = nn.ModuleList()
    for k, width in enumerate(widths):
        d = MDFDiscriminator(width)
        d.load_state_dict({key[len(f"{k}."):]: t for key, t in state.items() if key.startswith(f"{k}.")})
        discriminators.append(d)
    return discriminators


def mdf_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    discriminators: Sequence[MDFDiscriminator],
    num_scales: Optional[int] = None,
    distance: str = "mse",
    p: int = 1,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""The MDF loss between restored images and references, with the given discriminators.

    For each of the first ``num_scales`` discriminators (list order), on the full-resolution images,
    and each of its head, body and tail outputs: the mean over (C, H, W) of the squared difference
    (``distance="mse"``, the published loss) or, with ``distance="pdl"``, the mean over channels of
    the 1D Wasserstein distance :math:`W_p^p` between the spatial value distributions of each
    channel (``projected_distance(..., projection="spatial")``). These 3 x ``num_scales`` terms are
    summed per image.

    Args:
        x: ``(B, 3, H, W)`` restored images, RGB in [0, 1], H, W >= 11.
        y: ``(B, 3, H, W)`` references, the dtype and device of ``x``.
        discriminators: the series (e.g. ``MDFLoss.from_file(path).discriminators``), in eval mode,
            with the dtype and device of ``x``.
        num_scales: how many discriminators to use, from the first; ``None`` (default): the published code's 8,
            or all of them when fewer are given (``min(8, len(discriminators))``).
        distance: ``"mse"`` or ``"pdl"``.
        p: 1 or 2, the Wasserstein order of ``distance="pdl"``.
        reduction: ``"none"`` (``(B,)``), ``"mean"`` or ``"sum"`` over the batch.

    Returns:
        The loss; gradients flow to ``x`` (and to ``y`` if it requires grad).

    Example:
        >>> import torch
        >>> from pdl_ext.losses.mdf import MDFDiscriminator, mdf_loss
        >>> ds = [MDFDiscriminator(32).eval() for _ in range(2)]
        >>> mdf_loss(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), ds).shape   # both discriminators
        torch.Size([])
    """
    return _mdf_loss(x, y, discriminators, num_scales, distance, p, reduction, "mdf_loss")


def _mdf_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    discriminators: Sequence[MDFDiscriminator],
    num_scales: Optional[int],
    distance: str,
    p: int,
    reduction: str,
    fn: str,
) -> torch.Tensor:
    check_images(fn, x, y, channels=3, same_shape=True, min_size=(RECEPTIVE_FIELD, "the discriminators' receptive field"))
    if distance not in DISTANCES:
        raise ValueError(f"{fn}: distance must be 'mse' or 'pdl', got {distance!r}")
    p = check_p(p, fn)
    check_reduction(reduction, fn)
    count = len(discriminators)
    num_scales = _resolve_num_scales(num_scales, count)
    if not is_int(num_scales) or not 1 <= num_scales <= count:
        raise ValueError(
            f"{fn}: num_scales must be an int in [1, {count}] (the discriminators given), got {num_scales!r}"
        )
    weight = discriminators[0].head.conv.weight
    if weight.device != x.device or (weight.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type)):
        raise TypeError(
            f"{fn}: x is {x.dtype} on {x.device} but the discriminators hold {weight.dtype} on {weight.device}; "
            "move them with .to(x)"
        )
    per_image = x.new_zeros(x.shape[0])
    for d in discriminators[:num_scales]:
        fxs = d.features(x)
        # The reference's activations need no graph unless y itself is optimised.
        with torch.set_grad_enabled(torch.is_grad_enabled() and y.requires_grad):
            fys = d.features(y)
        for fx, fy in zip(fxs, fys):
            if distance == "mse":
                per_image = per_image + (fx - fy).pow(2).mean(dim=(1, 2, 3))
            else:
                per_image = per_image + projected_distance(fx, fy, p=p, projection="spatial").mean(1)
    return reduce(per_image, reduction)


class MDFLoss(nn.Module):
    r"""The MDF loss as a module holding a frozen discriminator series (``mdf_loss`` documents the value).

    Build it from the bundled published weights with ``MDFLoss.from_pretrained("sisr" | "denoise" | "jpeg")``
    or from a trained series with ``MDFLoss.from_file(path)``; the constructor alone
    makes an untrained series of ``widths`` (default: SinGAN's 32, 32, 32, 32, 64, ... for
    ``num_scales``, 8 when ``None``) to fill with ``load_state_dict``, or wraps ``discriminators`` you trained.
    The discriminators stay frozen and in eval mode, also under ``.train()``.

    Args:
        num_scales: how many discriminators the loss uses, from the first; ``None`` (default): the
            paper's 8, or all of them when the series holds fewer (``min(8, len(series))``).
        distance: ``"mse"`` (published) or ``"pdl"`` (projected distribution distance).
        p: 1 or 2, the Wasserstein order of ``distance="pdl"``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"`` over the batch.
        widths: widths of an untrained series (its length is the count).
        discriminators: an existing series of ``MDFDiscriminator`` to wrap instead.

    Shapes: ``x``, ``y``: ``(B, 3, H, W)``, RGB in [0, 1], H, W >= 11. Output: scalar, or ``(B,)``.

    Example:
        >>> import torch
        >>> from pdl_ext.losses.mdf import MDFLoss
        >>> loss_fn = MDFLoss(num_scales=2)          # untrained; usually MDFLoss.from_pretrained("sisr")
        >>> x = torch.rand(1, 3, 32, 32, requires_grad=True)
        >>> loss_fn(x, torch.rand(1, 3, 32, 32)).backward()
        >>> x.grad.shape
        torch.Size([1, 3, 32, 32])

    Paper: Mustafa et al., "Training a Task-Specific Image Reconstruction Loss", WACV 2022.
    """

    def __init__(
        self,
        num_scales: Optional[int] = None,
        distance: str = "mse",
        p: int = 1,
        reduction: str = "mean",
        *,
        widths: Optional[Sequence[int]] = None,
        discriminators: Optional[Iterable[MDFDiscriminator]] = None,
    ) -> None:
        super().__init__()
        fn = "MDFLoss"
        if discriminators is not None and widths is not None:
            raise ValueError(f"{fn}: give widths or discriminators, not both")
        if discriminators is None:
            if widths is None:
                num_scales = PAPER_SCALES if num_scales is None else num_scales
                if not is_int(num_scales) or num_scales < 1:
                    raise ValueError(f"{fn}: num_scales must be a positive int, got {num_scales!r}")
                widths = default_widths(num_scales)
            widths = list(widths)
            if not widths or any(not is_int(w) or w < 1 for w in widths):
                raise ValueError(f"{fn}: widths must be a non-empty list of positive ints, got {widths!r}")
            discriminators = [MDFDiscriminator(w) for w in widths]
        self.discriminators = nn.ModuleList(discriminators)
        count = len(self.discriminators)
        if count == 0 or not all(isinstance(d, MDFDiscriminator) for d in self.discriminators):
            raise ValueError(f"{fn}: discriminators must be a non-empty series of MDFDiscriminator")
        num_scales = _resolve_num_scales(num_scales, count)
        if not is_int(num_scales) or not 1 <= num_scales <= count:
            raise ValueError(
                f"{fn}: num_scales must be an int in [1, {count}] (the discriminators held), got {num_scales!r}"
            )
        if distance not in DISTANCES:
            raise ValueError(f"{fn}: distance must be 'mse' or 'pdl', got {distance!r}")
        self.num_scales = num_scales
        self.distance = distance
        self.p = check_p(p, fn)
        self.reduction = check_reduction(reduction, fn)
        self.requires_grad_(False)
        self.train(self.training)

    @classmethod
    def from_file(
        cls,
        path: Union[str, os.PathLike],
        num_scales: Optional[int] = None,
        distance: str = "mse",
        p: int = 1,
        reduction: str = "mean",
    ) -> "MDFLoss":
        """Loads a discriminator series from safetensors (``"{k}.head.conv.weight"``, ... as in
        the bundled published files; a published ``.pth`` converts with ``pdl-ext convert-mdf``).

        Args:
            path: the safetensors file; the count and widths of the series come from its tensors.
            num_scales: how many discriminators the loss uses, from the first; ``None`` (default):
                the published code's 8, or all of them when the file holds fewer (``min(8, count)``).
            distance, p, reduction: as in ``MDFLoss``.

        Returns:
            The loss module, its discriminators frozen and in eval mode.

        Raises:
            FileNotFoundError: no such file. ValueError: not a safetensors file, not the MDF layout
            (keys, shapes), or integer, bool or complex tensors where float weights go.

        Example:
            >>> loss_fn = MDFLoss.from_file("Ds_SISR.safetensors")   # doctest: +SKIP
        """
        fn = "MDFLoss.from_file"
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{fn}: no such file {str(path)!r}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(
                f"{fn}: {str(path)!r} is not a safetensors file ({e}); convert a published .pth with "
                "`pdl-ext convert-mdf SRC.pth DST.safetensors`"
            ) from e
        discriminators = discriminators_from_state_dict(state, fn, repr(str(path)))
        return cls(num_scales, distance, p, reduction, discriminators=discriminators)

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        num_scales: Optional[int] = None,
        distance: str = "mse",
        p: int = 1,
        reduction: str = "mean",
    ) -> "MDFLoss":
        """The published discriminators (Mustafa et al., WACV 2022), bundled with the package.

        ``"sisr"``: ``Ds_SISR`` (9 discriminators, widths 32 x4, 64 x4, 128), trained for super-resolution;
        ``"denoise"``: ``Ds_Denoising``, byte-identical to ``Ds_SISR`` in the authors' release (the same file);
        ``"jpeg"``: ``Ds_JPEG`` (8 discriminators, widths 32 x4, 64 x4). The files are safetensors inside
        the installed package (``pdl_ext/losses/weights/mdf``, with the authors' BSD-3-Clause ``LICENSE``):
        loading executes no code and reads nothing from the network.

        Args:
            name: ``"sisr"``, ``"denoise"`` or ``"jpeg"``.
            num_scales, distance, p, reduction: as in ``from_file`` (``None``: the published code's first 8).

        Returns:
            The loss module (float32, on the CPU), its discriminators frozen and in eval mode; move it
            with ``.to(x)``. Called on ``x``, ``y`` of shape ``(B, 3, H, W)`` (RGB in [0, 1],
            H, W >= 11), it returns a scalar, or ``(B,)`` with ``reduction="none"``.

        Raises:
            ValueError: an unknown ``name``, or an argument ``MDFLoss`` refuses.

        Example:
            >>> import torch
            >>> from pdl_ext import MDFLoss
            >>> loss_fn = MDFLoss.from_pretrained("sisr")
            >>> loss_fn.widths
            [32, 32, 32, 32, 64, 64, 64, 64, 128]
            >>> x = torch.rand(2, 3, 32, 32, requires_grad=True)
            >>> loss_fn(x, torch.rand(2, 3, 32, 32)).backward()
            >>> MDFLoss.from_pretrained("jpeg", num_scales=2, reduction="none")(x, x).tolist()
            [0.0, 0.0]
        """
        fn = "MDFLoss.from_pretrained"
        if not isinstance(name, str) or name not in PRETRAINED:
            names = ", ".join(repr(n) for n in PRETRAINED)
            raise ValueError(f"{fn}: name must be one of {names}, got {name!r}")
        path = pretrained_path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"{fn}: the bundled file {str(path)!r} is missing: a broken install of pdl-ext (reinstall it)"
            )
        return cls.from_file(path, num_scales, distance, p, reduction)

    @property
    def widths(self) -> List[int]:
        return [d.width for d in self.discriminators]

    def train(self, mode: bool = True) -> "MDFLoss":
        super().train(mode)
        # BatchNorm must keep its running statistics: the features are frozen.
        self.discriminators.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _mdf_loss(x, y, self.discriminators, self.num_scales, self.distance, self.p, self.reduction, "MDFLoss")

    def extra_repr(self) -> str:
        return f"num_scales={self.num_scales}, distance={self.distance!r}, p={self.p}, reduction={self.reduction!r}"
