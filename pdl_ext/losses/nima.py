"""NIMA, the learned no-reference quality model, its EMD loss, and the enhancement loss built on it.

Papers: Talebi & Milanfar, "NIMA: Neural Image Assessment", IEEE TIP 2018 (the model and the EMD
loss); Talebi & Milanfar, "Learned Perceptual Image Enhancement", ICCP 2018 (NIMA's mean score as a
training loss of an enhancement operator).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .._checks import check_float, check_images, check_reduction, check_same_dtype_device, check_tensor, is_int, is_number, reduce
from .pixel import PIXEL_LOSSES, pixel_loss_per_sample
from .vgg import VGGFeatures
from ..io.weights import check_float_tensors, compare_layout, load_state_dict


def _check_histograms(x: object, name: str, fn: str) -> torch.Tensor:
    x = check_tensor(name, x, fn)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{fn}: {name} must be histograms (..., num_bins), got shape {tuple(x.shape)}")
    return x


def _scores(probs: torch.Tensor) -> torch.Tensor:
    """The scores 1..K of the bins, in the dtype and on the device of `probs`."""
    return torch.arange(1, probs.shape[-1] + 1, device=probs.device, dtype=probs.dtype)


def mean_score(probs: torch.Tensor) -> torch.Tensor:
    r"""Mean score :math:`\sum_i i\,p_i` of rating histograms over the scores 1..K.

    Args:
        probs: ``(..., K)`` probabilities (a softmax output) or raw vote counts; normalised to sum
            to one inside.

    Returns:
        ``(...)`` mean scores in [1, K].

    Example:
        >>> mean_score(torch.tensor([0., 0, 0, 0, 1, 1, 0, 0, 0, 0]))
        tensor(5.5000)

    Paper: Talebi & Milanfar, "NIMA: Neural Image Assessment", IEEE TIP 2018.
    """
    probs = _check_histograms(probs, "probs", "mean_score")
    check_float("probs", probs, "mean_score")
    p = probs / probs.sum(-1, keepdim=True)
    return (p * _scores(p)).sum(-1)


def std_score(probs: torch.Tensor) -> torch.Tensor:
    r"""Standard deviation :math:`\sqrt{\sum_i (i - \mu)^2 p_i}` of rating histograms over 1..K.

    Args:
        probs: ``(..., K)`` probabilities or raw vote counts (normalised inside).

    Returns:
        ``(...)`` standard deviations.

    Example:
        >>> std_score(torch.tensor([1., 0, 1]))
        tensor(1.)
    """
    probs = _check_histograms(probs, "probs", "std_score")
    check_float("probs", probs, "std_score")
    p = probs / probs.sum(-1, keepdim=True)
    mu = (p * _scores(p)).sum(-1, keepdim=True)
    return ((_scores(p) - mu).square() * p).sum(-1).sqrt()


def emd_loss(pred: torch.Tensor, target: torch.Tensor, r: float = 2, reduction: str = "mean") -> torch.Tensor:
    r"""Earth mover's distance between rating histograms, NIMA's training loss.

    Per sample :math:`\left(\frac{1}{K}\sum_{k=1}^K |CDF_p(k) - CDF_t(k)|^r\right)^{1/r}`, then the
    batch reduction. Both histograms are normalised to sum to one first (AVA gives raw vote counts);
    the root is taken per sample, before the reduction.

    Args:
        pred: ``(..., K)`` predicted probabilities (or any non-negative histogram).
        target: ``(..., K)`` target histograms, e.g. raw vote counts (integer counts are accepted).
        r: the norm's exponent (NIMA uses 2).
        reduction: ``"none"`` -> ``(...)``, ``"mean"`` or ``"sum"`` over all samples.

    Returns:
        The loss; differentiable to ``pred``.

    Example:
        >>> p = torch.tensor([[0.5, 0.5, 0.0]]); t = torch.tensor([[0.0, 2.0, 2.0]])
        >>> emd_loss(p, t, r=1)
        tensor(0.3333)

    Paper: Talebi & Milanfar, "NIMA: Neural Image Assessment", IEEE TIP 2018, eq. (1).
    """
    fn = "emd_loss"
    pred = _check_histograms(pred, "pred", fn)
    target = _check_histograms(target, "target", fn)
    check_float("pred", pred, fn)
    if pred.shape != target.shape:
        raise ValueError(f"{fn}: pred and target must have the same shape (..., K), "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")
    if target.device != pred.device:
        raise ValueError(f"{fn}: target must be on the device of pred ({pred.device}), got {target.device}")
    if not is_number(r) or not r > 0:
        raise ValueError(f"{fn}: r must be a positive number, got {r!r}")
    check_reduction(reduction, fn)
    # cumulative sums in half precision drift; compute in at least float32
    work = torch.promote_types(pred.dtype, torch.float32)
    p, t = pred.to(work), target.to(work)
    p = p / p.sum(-1, keepdim=True)
    t = t / t.sum(-1, keepdim=True)
    m = (p.cumsum(-1) - t.cumsum(-1)).abs().pow(r).mean(-1)
    # clamp: the r-th root has an infinite slope at 0 (pred == target would give NaN gradients)
    per_sample = m.clamp_min(torch.finfo(work).tiny).pow(1.0 / r) if r != 1 else m
    return reduce(per_sample, reduction).to(pred.dtype)


class EMDLoss(nn.Module):
    """Module form of :func:`emd_loss`; stores ``r`` and ``reduction``.

    Example:
        >>> EMDLoss()(torch.softmax(torch.randn(4, 10), -1), torch.randint(0, 50, (4, 10))).shape
        torch.Size([])
    """

    def __init__(self, r: float = 2, reduction: str = "mean") -> None:
        super().__init__()
        self.r = r
        self.reduction = check_reduction(reduction, "EMDLoss")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return emd_loss(pred, target, r=self.r, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"r={self.r}, reduction={self.reduction!r}"


class NIMA(nn.Module):
    r"""Neural Image Assessment: predicts the histogram of human ratings (scores 1..K) of an image.

    Backbone features, global average pooling, dropout, a linear layer to ``num_bins``, softmax.

    Args:
        backbone: ``"vgg16"`` or ``"vgg19"`` (the package's VGG up to ``pool5``, ImageNet normalisation
            inside, 512 features, trainable), or any ``nn.Module`` mapping ``(B, 3, H, W)`` to
            ``(B, F, h, w)``, ``(B, F)`` or a list whose last element is one of these.
        num_bins: number of score bins K (10 for AVA).
        dropout: dropout probability before the linear layer (0.75, as in the NIMA paper, Sec. III).
        weights: a NIMA checkpoint (`.safetensors` written by ``train_nima``, or a `.pth` state dict,
            loaded with ``weights_only=True``). When given, the backbone's ImageNet weights are not
            needed and not loaded.
        pretrained_backbone: for a VGG backbone without ``weights``, start from torchvision's ImageNet
            weights (found as :class:`~pdl_ext.losses.vgg.VGGFeatures` finds them); ``False``: random init.
        backbone_weights: file of the VGG ImageNet weights (torchvision layout), instead of the hub cache.
        download: allow downloading the VGG ImageNet weights.
        num_features: F, the backbone's output channels; inferred by a dummy forward when omitted.
        dummy_size: side of the dummy input used to infer F.

    Shapes:
        input ``(B, 3, H, W)`` RGB in [0, 1] (for VGG; a custom backbone gets the images as they are);
        output ``(B, num_bins)`` probabilities.

    Example:
        >>> tiny = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU())
        >>> nima = NIMA(tiny, dropout=0.0).eval()
        >>> probs = nima(torch.rand(2, 3, 32, 32))
        >>> probs.shape, mean_score(probs).shape
        (torch.Size([2, 10]), torch.Size([2]))

    Paper: Talebi & Milanfar, "NIMA: Neural Image Assessment", IEEE TIP 2018.
    """

    def __init__(
        self,
        backbone: Union[str, nn.Module] = "vgg16",
        num_bins: int = 10,
        dropout: float = 0.75,
        weights: Union[str, Path, None] = None,
        pretrained_backbone: bool = True,
        *,
        backbone_weights: Union[str, Path, None] = None,
        download: bool = False,
        num_features: Optional[int] = None,
        dummy_size: int = 64,
    ) -> None:
        super().__init__()
        if not is_int(num_bins) or num_bins < 2:
            raise ValueError(f"NIMA: num_bins must be an integer >= 2, got {num_bins!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"NIMA: dropout must be in [0, 1), got {dropout!r}")
        if isinstance(backbone, str):
            if backbone not in ("vgg16", "vgg19"):
                raise ValueError(f"NIMA: backbone must be 'vgg16', 'vgg19' or an nn.Module, got {backbone!r}")
            if backbone_weights is not None and not pretrained_backbone:
                raise ValueError("NIMA: backbone_weights is given but pretrained_backbone=False; pass one or the other")
            load_imagenet = weights is None and pretrained_backbone
            self.backbone: nn.Module = VGGFeatures(
                backbone, layers=("pool5",), weights=backbone_weights if load_imagenet else None,
                pretrained=load_imagenet, download=download, frozen=False,
            )
            num_features = num_features or 512
        elif isinstance(backbone, nn.Module):
            self.backbone = backbone
            if num_features is None:
                num_features = self._infer_num_features(dummy_size)
        else:
            raise TypeError(f"NIMA: backbone must be 'vgg16', 'vgg19' or an nn.Module, got {type(backbone).__name__}")
        self.backbone_name = backbone if isinstance(backbone, str) else type(backbone).__name__
        self.num_bins = num_bins
        self.num_features = int(num_features)
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(self.num_features, num_bins)
        if weights is not None:
            self.load_weights(weights)

    @torch.no_grad()
    def _infer_num_features(self, size: int) -> int:
        param = next(self.backbone.parameters(), None)
        kwargs = {"device": param.device, "dtype": param.dtype} if param is not None else {}
        was_training = self.backbone.training
        self.backbone.eval()  # a dummy batch must not touch BatchNorm running statistics
        try:
            f = self._pool(self.backbone(torch.zeros(1, 3, size, size, **kwargs)))
        except Exception as e:
            raise ValueError(
                f"NIMA: could not infer the backbone's number of features with a (1, 3, {size}, {size}) input "
                f"({type(e).__name__}: {e}); pass num_features= (and/or dummy_size=)"
            ) from e
        finally:
            self.backbone.train(was_training)
        return int(f.shape[1])

    @staticmethod
    def _pool(out: object) -> torch.Tensor:
        if isinstance(out, (list, tuple)):
            out = out[-1]
        if not isinstance(out, torch.Tensor) or out.dim() not in (2, 4):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"NIMA: the backbone must return (B, F, h, w) or (B, F) features, got {got}")
        return out.mean(dim=(2, 3)) if out.dim() == 4 else out

    def load_weights(self, weights: Union[str, Path]) -> None:
        """Loads a whole NIMA state dict (backbone and head) from `.safetensors` or a `.pth` file."""
        sd = load_state_dict(weights)
        own = self.state_dict()
        layout = compare_layout(sd, own)
        missing, unexpected = sorted(layout.missing), layout.unexpected
        if missing or unexpected:
            raise ValueError(
                f"NIMA: {weights} does not match this model ({self.backbone_name}, {self.num_bins} bins): "
                f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
                f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}"
            )
        wrong = [f"{k}: expected {e}, got {g}" for k, e, g in layout.wrong_shapes]
        if wrong:
            raise ValueError(f"NIMA: {weights} has wrongly shaped tensors: {wrong[:4]}")
        check_float_tensors(sd, [k for k, v in own.items() if v.is_floating_point()], "NIMA", weights)
        self.load_state_dict(sd)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled backbone features ``(B, F)``."""
        check_images("NIMA", x, channels=3, shape_text="(B, 3, H, W) RGB images")
        if isinstance(self.backbone, VGGFeatures) and min(x.shape[-2:]) < self.backbone.min_size:
            need = self.backbone.min_size
            raise ValueError(f"NIMA: x must be at least {need}x{need} for the {self.backbone.arch} backbone "
                             f"(its max-pools), got {tuple(x.shape[-2:])}")
        return self._pool(self.backbone(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised bin scores ``(B, num_bins)``."""
        return self.head(self.dropout(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted rating histogram ``(B, num_bins)`` (softmax over the bins)."""
        logits = self.logits(x)
        # softmax in at least float32 under autocast
        return torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)

    def extra_repr(self) -> str:
        return f"backbone={self.backbone_name!r}, num_features={self.num_features}, num_bins={self.num_bins}"


_FIDELITIES = PIXEL_LOSSES


_UNSET: Any = object()  # marks an argument that was not passed


class NIMALoss(nn.Module):
    r"""Fidelity to the reference plus NIMA's aesthetic penalty (Learned Perceptual Image Enhancement).

    Per sample
    :math:`\text{fidelity}(\hat y, y) + w\,\frac{s_{max} - \text{mean\_score}(\text{NIMA}(\hat y))}{s_{max} - 1}`,
    then ``reduction`` over the batch. The penalty is 0 for a perfect predicted score and 1 for the
    worst. NIMA is frozen (no parameter requires grad; kept in eval mode, so dropout is off, even by
    ``.train()``; note this freezes the given module in place); gradients reach the output image only.

    To combine with PDLLoss, add the terms; NIMA is then the only place that sees the output's
    aesthetics and PDL the only one that sees its features::

        pdl = PDLLoss(pixel_loss="l1")                            # fidelity + feature distributions
        aesthetic = NIMALoss(nima, weight=0.1, pixel_loss=None)   # penalty term only, no second pixel term
        loss = pdl(out, ref) + aesthetic(out)

    Args:
        nima: a trained :class:`NIMA` (or any module mapping ``(B, 3, H, W)`` to ``(B, K)`` probabilities).
        weight: w, the penalty's weight. 0.1 is a starting point, not a value from the paper, which
            tunes it per operator; raise it until the scores improve without visible artifacts.
        pixel_loss: ``"l1"``, ``"l2"`` (mean squared error), ``"charbonnier"``
            (:math:`\sqrt{d^2 + \epsilon^2}`, ``eps=1e-3``) per sample over ``(C, H, W)``, or None for
            the penalty alone (then ``target`` may be omitted).
        max_score: :math:`s_{max}`, the best score; default ``num_bins`` of NIMA (10).
        reduction: ``"none"`` -> ``(B,)``, ``"mean"`` or ``"sum"``.
        eps: Charbonnier's epsilon.

    Shapes:
        output, target ``(B, 3, H, W)`` in NIMA's input range ([0, 1]).

    Example:
        >>> nima = NIMA(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), dropout=0.0)
        >>> loss_fn = NIMALoss(nima, weight=0.1, pixel_loss="l1")
        >>> out = torch.rand(2, 3, 16, 16, requires_grad=True)
        >>> loss_fn(out, torch.rand(2, 3, 16, 16)).backward()
        >>> out.grad.shape
        torch.Size([2, 3, 16, 16])

    Paper: Talebi & Milanfar, "Learned Perceptual Image Enhancement", ICCP 2018.
    """

    def __init__(
        self,
        nima: nn.Module,
        weight: float = 0.1,
        pixel_loss: Optional[str] = "l1",
        max_score: Optional[float] = None,
        reduction: str = "mean",
        eps: float = 1e-3,
        *,
        fidelity: Any = _UNSET,
    ) -> None:
        super().__init__()
        arg = "pixel_loss"
        if fidelity is not _UNSET:  # the old name of pixel_loss
            warnings.warn("NIMALoss: fidelity= is deprecated; use pixel_loss= (the name PDLLoss uses)",
                          DeprecationWarning, stacklevel=2)
            pixel_loss, arg = fidelity, "fidelity"
        if not isinstance(nima, nn.Module):
            raise TypeError(f"NIMALoss: nima must be an nn.Module (a NIMA), got {type(nima).__name__}")
        if pixel_loss is not None and pixel_loss not in _FIDELITIES:
            raise ValueError(f"NIMALoss: {arg} must be 'l1', 'l2', 'charbonnier' or None, got {pixel_loss!r}")
        if max_score is None:
            max_score = float(getattr(nima, "num_bins", 10))
        if not float(max_score) > 1:
            raise ValueError(f"NIMALoss: max_score must be > 1, got {max_score!r}")
        self.nima = nima.requires_grad_(False).eval()
        self.weight = float(weight)
        self.pixel_loss = pixel_loss
        self.max_score = float(max_score)
        self.reduction = check_reduction(reduction, "NIMALoss")
        self.eps = float(eps)

    @property
    def fidelity(self) -> Optional[str]:
        """Deprecated name of :attr:`pixel_loss`."""
        return self.pixel_loss

    def train(self, mode: bool = True) -> "NIMALoss":
        super().train(mode)
        self.nima.eval()  # a frozen critic: dropout would make the penalty noisy
        return self

    def score_penalty(self, output: torch.Tensor) -> torch.Tensor:
        """Per-sample ``(max_score - mean_score(NIMA(output))) / (max_score - 1)``, shape ``(B,)``."""
        return (self.max_score - mean_score(self.nima(output))) / (self.max_score - 1.0)

    def forward(self, output: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        fn = "NIMALoss"
        check_images(fn, output, names=("output", "target"), channels=3)
        loss = self.weight * self.score_penalty(output)
        if self.pixel_loss is not None:
            if target is None:
                raise ValueError(f"{fn}: target is required with pixel_loss={self.pixel_loss!r} (or use pixel_loss=None)")
            target = check_tensor("target", target, fn)
            if target.shape != output.shape:
                raise ValueError(f"{fn}: target must have the shape of output {tuple(output.shape)}, "
                                 f"got {tuple(target.shape)}")
            check_same_dtype_device(output, target, fn, ("output", "target"))
            loss = pixel_loss_per_sample(output, target, self.pixel_loss, self.eps).to(loss.dtype) + loss
        return reduce(loss, self.reduction)

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, pixel_loss={self.pixel_loss!r}, max_score={self.max_score}, "
                f"reduction={self.reduction!r}")
