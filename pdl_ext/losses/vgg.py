"""VGG16 and VGG19 feature extractors with torchvision's state-dict layout (no torchvision needed).

The convolutional part is an ``nn.Sequential`` named ``features`` whose indices are torchvision's,
so ``features.N.weight`` of a torchvision checkpoint (``vgg16-397923af.pth``, ``vgg19-dcbb9e9d.pth``)
loads as it is. Paper: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple, Union

import torch
from torch import nn

from .._checks import check_images
from ..io.weights import check_float_tensors, compare_layout, find_in_hub_cache, hub_checkpoint_dir, load_state_dict

# Output channels of each conv; "M" is a 2x2 max pool (torchvision's configurations "D" and "E").
_CONFIGS: Dict[str, Tuple[Union[int, str], ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
# torchvision's ImageNet weights (IMAGENET1K_V1) and their file names in the torch hub cache.
VGG_URLS: Dict[str, str] = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg_layer_names(arch: str) -> Dict[str, Tuple[int, int]]:
    """Maps ``conv{i}_{j}``, ``relu{i}_{j}``, ``pool{i}`` to (index in ``features``, output channels).

    Example:
        >>> vgg_layer_names("vgg16")["relu1_2"]
        (3, 64)
    """
    if arch not in _CONFIGS:
        raise ValueError(f"VGGFeatures: arch must be one of {sorted(_CONFIGS)}, got {arch!r}")
    names: Dict[str, Tuple[int, int]] = {}
    index, block, conv = 0, 1, 1
    for v in _CONFIGS[arch]:
        if v == "M":
            names[f"pool{block}"] = (index, channels)
            index, block, conv = index + 1, block + 1, 1
        else:
            channels = int(v)
            names[f"conv{block}_{conv}"] = (index, channels)
            names[f"relu{block}_{conv}"] = (index + 1, channels)
            index, conv = index + 2, conv + 1
    return names


def _make_features(arch: str, depth: int) -> nn.Sequential:
    """torchvision's ``features`` Sequential, cut after index ``depth - 1``."""
    layers: List[nn.Module] = []
    in_ch = 3
    for v in _CONFIGS[arch]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            # not inplace: a requested conv{i}_{j} output must survive the ReLU that follows it
            layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = int(v)
    return nn.Sequential(*layers[:depth])


class VGGFeatures(nn.Module):
    r"""Frozen VGG16/VGG19 activations at named layers, for images in [0, 1].

    ImageNet normalisation (mean ``(0.485, 0.456, 0.406)``, std ``(0.229, 0.224, 0.225)``) is applied
    inside; ``features`` is torchvision's Sequential (same indices and state-dict keys), truncated after
    the deepest requested layer.

    Args:
        arch: ``"vgg16"`` or ``"vgg19"``.
        layers: names ``conv{i}_{j}``, ``relu{i}_{j}``, ``pool{i}`` (``relu1_2`` is ``features[3]``).
        weights: a `.pth`/`.pt` (loaded with ``weights_only=True``) or `.safetensors` file with
            torchvision's keys; extra keys (``classifier.*``, deeper layers) are ignored.
        pretrained: with ``weights=None``, load torchvision's ImageNet weights: from the torch hub cache
            (``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``), else downloaded when
            ``download=True``, else an error. ``False``: random init as torchvision (Kaiming normal,
            fan-out, zero bias).
        download: allow fetching the weights with ``torch.hub.load_state_dict_from_url``.
        frozen: ``True`` (default): no parameter requires grad and the module stays in eval mode even
            under ``.train()``. ``False`` leaves it trainable (used by NIMA's fine-tuning).

    Attributes:
        layers: the requested names, in the order of ``forward``'s output.
        depth_layers: the same names in depth order, the order of ``iter_features``.
        out_channels: channels of each requested layer, in the order of ``layers``.
        min_size: the smallest image side the kept layers accept (``2 ** k`` for ``k`` max-pools).

    Shapes:
        input ``(B, 3, H, W)`` RGB in [0, 1]; output: one ``(B, C_l, H_l, W_l)`` map per layer.

    Example:
        >>> vgg = VGGFeatures("vgg16", layers=("relu1_2", "relu2_2"), pretrained=False)
        >>> [tuple(f.shape) for f in vgg(torch.rand(1, 3, 32, 32))]
        [(1, 64, 32, 32), (1, 128, 16, 16)]
        >>> vgg.out_channels
        (64, 128)
    """

    def __init__(
        self,
        arch: str = "vgg16",
        layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"),
        weights: Union[str, Path, None] = None,
        pretrained: bool = True,
        download: bool = False,
        *,
        frozen: bool = True,
    ) -> None:
        super().__init__()
        table = vgg_layer_names(arch)
        if isinstance(layers, str):
            layers = (layers,)
        layers = tuple(layers)
        if not layers:
            raise ValueError("VGGFeatures: layers must name at least one layer, got ()")
        unknown = [n for n in layers if n not in table]
        if unknown:
            valid = ", ".join(sorted(table, key=lambda n: table[n][0]))
            raise ValueError(f"VGGFeatures: unknown layer(s) {unknown} for {arch}; valid layers: {valid}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"VGGFeatures: layers must not repeat a name, got {list(layers)}")
        if weights is not None and not pretrained:
            raise ValueError("VGGFeatures: pretrained=False asks for random weights but weights= names a file; "
                             "pass one or the other")
        self.arch = arch
        self.layers: Tuple[str, ...] = layers
        self.depth_layers: Tuple[str, ...] = tuple(sorted(layers, key=lambda n: table[n][0]))
        self.out_channels: Tuple[int, ...] = tuple(table[n][1] for n in layers)
        self._index_to_name = {table[n][0]: n for n in layers}
        self.frozen = frozen
        self.features = _make_features(arch, max(self._index_to_name) + 1)
        # each 2x2 max-pool halves the side (rounding down) and refuses a side below 2
        self.min_size: int = 2 ** sum(isinstance(m, nn.MaxPool2d) for m in self.features)
        # non-persistent: the state dict stays exactly torchvision's features.N.* keys
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        if pretrained:
            self.load_weights(weights if weights is not None else self._default_weights(download))
        else:
            self.reset_parameters()
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def reset_parameters(self) -> None:
        """Random init as torchvision: Kaiming normal (fan-out, ReLU) convolutions, zero biases."""
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def _default_weights(self, download: bool) -> Union[Path, Dict[str, torch.Tensor]]:
        url = VGG_URLS[self.arch]
        filename = url.rsplit("/", 1)[-1]
        found = find_in_hub_cache([filename])
        if found is not None:
            return found
        if download:
            return torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=True, check_hash=True, weights_only=True
            )
        raise FileNotFoundError(
            f"VGGFeatures: no {self.arch} weights found: looked for {filename} in {hub_checkpoint_dir()} "
            f"(the torch hub cache, torch.hub.get_dir()/checkpoints; set TORCH_HOME to move it). Provide them "
            f"by one of: weights='path/to/{filename}' (.pth or .safetensors with torchvision's keys); copying "
            f"the file from {url} into that directory; download=True to fetch it; or pretrained=False for "
            f"random weights."
        )

    def load_weights(self, weights: Union[str, Path, Dict[str, torch.Tensor]]) -> None:
        """Loads ``features.N.*`` tensors (torchvision layout) from a file or a state dict.

        Keys outside the kept ``features`` (``classifier.*``, deeper layers) are ignored; a missing
        or wrongly shaped feature tensor is an error that names it.
        """
        source = str(weights) if not isinstance(weights, dict) else "the given state dict"
        sd = load_state_dict(weights) if not isinstance(weights, dict) else weights
        own = self.features.state_dict()
        layout = compare_layout(sd, {f"features.{k}": v for k, v in own.items()})
        missing = layout.missing
        if missing:
            conv_keys = {int(k.split(".")[1]) for k in sd if re.fullmatch(r"features\.\d+\.weight", k)}
            other = [a for a in _CONFIGS if a != self.arch and conv_keys == {i for i, _ in _conv_indices(a)}]
            hint = f" (the file looks like a {other[0]} checkpoint)" if other else ""
            raise ValueError(
                f"VGGFeatures: {source} lacks {len(missing)} tensor(s) of {self.arch} features{hint}: "
                f"{missing[:8]}{' ...' if len(missing) > 8 else ''}; expected torchvision's features.N.weight/bias keys"
            )
        wrong = [f"{k}: expected {e}, got {g}" for k, e, g in layout.wrong_shapes]
        if wrong:
            raise ValueError(f"VGGFeatures: {source} has wrongly shaped {self.arch} tensors: {wrong[:4]}")
        check_float_tensors(sd, [f"features.{k}" for k in own], "VGGFeatures", source)
        self.features.load_state_dict({k: sd[f"features.{k}"] for k in own})

    def train(self, mode: bool = True) -> "VGGFeatures":
        # a frozen backbone never leaves eval mode, whatever its parent module asks
        return super().train(mode and not self.frozen)

    def _check_input(self, x: object) -> torch.Tensor:
        check_images("VGGFeatures", x, channels=3, shape_text="(B, 3, H, W) RGB in [0, 1]")
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation of RGB images in [0, 1]."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def iter_features(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Yields each requested layer's map in depth order (``self.depth_layers``) as soon as computed.

        A consumer that drops each map before asking for the next keeps only one alive (plus what
        autograd saves).
        """
        h = self.normalize(self._check_input(x))
        for i, module in enumerate(self.features):
            h = module(h)
            if i in self._index_to_name:
                yield h

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Feature maps of the requested layers, in the order of ``self.layers``."""
        h = self.normalize(self._check_input(x))
        out: Dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.features):
            h = module(h)
            if i in self._index_to_name:
                out[self._index_to_name[i]] = h
        return [out[n] for n in self.layers]

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, layers={self.layers}, frozen={self.frozen}"


def _conv_indices(arch: str) -> List[Tuple[int, int]]:
    """(index in features, out channels) of every conv of `arch`."""
    return [v for k, v in vgg_layer_names(arch).items() if k.startswith("conv")]
