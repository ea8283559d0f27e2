"""The stock models and guides by name: the one place the command line reaches into
``pyro_vae.models`` and ``pyro_vae.guides``.

A run's configuration (``config.json``, also stored inside the checkpoint) names the pieces, so a
checkpoint can be turned back into a model and guide without any Python code of the user's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.checkpoint import NOT_A_CHECKPOINT, Checkpoint, load_checkpoint
from pyro_vae.device import resolve_device
from pyro_vae.guides import AmortizedDelta, AmortizedNormal, ConditionalNormal, TopDownGuide
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.models import VAE, ConditionalVAE, HierarchicalVAE, VampPriorVAE
from pyro_vae.models.vampprior import initial_pseudo_inputs
from pyro_vae.nets import ARCHITECTURES
from pyro_vae.preprocessing import Preprocessor

GUIDES = {"normal": AmortizedNormal, "delta": AmortizedDelta}
MODELS = ("vae", "hierarchical")  # a config without "model" (an older run) is a plain VAE
PRIORS = ("normal", "vampprior")  # a config without "prior" has N(0, I)
BOUNDED_LIKELIHOODS = ("bernoulli", "continuous-bernoulli")  # data in [0, 1]: pseudo-inputs clipped there
CHECKPOINT_NAME = "checkpoint.pt"
GAN_MODEL = "gan"  # the config's "model" of a run of 'pyro-vae train-gan' (pyro_vae.cli.gan_run)


Model = VAE | ConditionalVAE | HierarchicalVAE
Guide = AmortizedNormal | AmortizedDelta | ConditionalNormal | TopDownGuide


def _build_conditional(config: dict) -> tuple[ConditionalVAE, ConditionalNormal]:
    x_shape, latent_dim, hidden, arch = config["x_shape"], config["latent_dim"], config["hidden"], config["arch"]
    classes, embedding = config["num_classes"], config.get("embedding_dim")
    options = config.get("likelihood_options", {})
    model = ConditionalVAE.build(x_shape, classes, latent_dim, hidden, arch, config["likelihood"], embedding, **options)
    guide = ConditionalNormal.build(
        x_shape,
        classes,
        latent_dim,
        hidden,
        arch,
        embedding,
        config.get("classifier_arch"),
        config.get("classifier_hidden"),
    )
    if config.get("alpha", 0) > 0:
        model.classifier, model.alpha = guide.classifier, config["alpha"]
    return model, guide


def pseudo_inputs(config: dict, train_x: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple | None]:
    """The VampPrior's initial pseudo-inputs and bounds for ``config``: ``config["pseudo_inputs"]``
    random training data (moved inside (0, 1) for data in [0, 1], so the clip passes gradients), or,
    without ``train_x`` (a checkpoint's weights will replace them), that many mid-range values."""
    count, shape = config["pseudo_inputs"], config["x_shape"]
    bounds = (0.0, 1.0) if config["likelihood"] in BOUNDED_LIKELIHOODS else None
    if train_x is None:
        return torch.full((count, *shape), 0.5 if bounds else 0.0), bounds
    return initial_pseudo_inputs(train_x, count, bounds), bounds


def check_combination(config: dict) -> None:
    """Refuse a configuration that combines options no stock pair has, naming the flags (and
    config keys) to drop: the hierarchical VAE and the VampPrior need the unconditional Normal guide
    (the top-down guide, or the posterior the VampPrior averages), and the conditional VAE has its
    own Normal guide."""
    other_guide = config.get("conditional") or config.get("guide") != "normal"
    if config.get("model", "vae") == "hierarchical" and other_guide:
        raise ValueError(
            "--model hierarchical is unconditional, with its own top-down Normal guide: "
            "drop --conditional and --guide (config keys 'conditional', 'guide')"
        )
    if config.get("prior") == "vampprior" and other_guide:
        raise ValueError(
            "--prior vampprior averages the Normal guide's posterior: "
            "drop --conditional and --guide (config keys 'conditional', 'guide')"
        )
    if config.get("conditional") and config.get("guide", "normal") != "normal":
        raise ValueError(
            "--conditional trains the conditional VAE with its own Normal guide: drop --guide (config key 'guide')"
        )


def _build_hierarchical(config: dict, train_x: torch.Tensor | None) -> tuple[HierarchicalVAE, TopDownGuide]:
    x_shape, latent_dim, hidden, arch = config["x_shape"], config["latent_dim"], config["hidden"], config["arch"]
    options = config.get("likelihood_options", {})
    model = HierarchicalVAE.build(x_shape, latent_dim, hidden, arch, config["likelihood"], config["layers"], **options)
    guide = TopDownGuide.build_for(model, x_shape, hidden, arch)
    if config.get("prior") == "vampprior":
        model.use_vampprior(guide.posterior, *pseudo_inputs(config, train_x))
    return model, guide


def build_pair(config: dict, train_x: torch.Tensor | None = None) -> tuple[Model, Guide]:
    """The stock model and guide that ``config`` describes (untrained): its ``"model"``, ``"vae"``
    (the default) or ``"hierarchical"`` (with ``"layers"`` stochastic layers of ``"latent_dim"``
    dimensions each), or the conditional VAE; with ``"prior": "vampprior"`` the VampPrior over
    ``"pseudo_inputs"`` pseudo-inputs, started at random rows of ``train_x`` when given; a
    combination no stock pair has is refused (:func:`check_combination`)."""
    check_combination(config)
    if config.get("model", "vae") == "hierarchical":
        return _build_hierarchical(config, train_x)
    if config.get("conditional"):
        return _build_conditional(config)
    if config.get("guide") not in GUIDES:
        raise ValueError(f"unknown guide {config.get('guide')!r}; choose one of {sorted(GUIDES)}")
    x_shape, latent_dim, hidden, arch = config["x_shape"], config["latent_dim"], config["hidden"], config["arch"]
    options = config.get("likelihood_options", {})
    guide = GUIDES[config["guide"]].build(x_shape, latent_dim, hidden, arch)
    if config.get("prior") == "vampprior":
        initial, bounds = pseudo_inputs(config, train_x)
        likelihood = config["likelihood"]
        return VampPriorVAE.build_for(guide, initial, latent_dim, hidden, arch, likelihood, bounds, **options), guide
    model = VAE.build(x_shape, latent_dim, hidden, arch, config["likelihood"], **options)
    return model, guide


@dataclass
class Run:
    """A trained stock model loaded from a run directory or checkpoint file."""

    model: Model
    guide: Guide
    checkpoint: Checkpoint
    preprocessor: Preprocessor
    device: torch.device
    directory: Path

    @property
    def config(self) -> dict:
        return self.checkpoint.config

    @property
    def conditional(self) -> bool:
        return bool(self.config.get("conditional"))

    @property
    def latent_model(self) -> Callable:
        """The model the latent figures decode codes of site ``"z"`` with: a hierarchical model's
        :meth:`~pyro_vae.models.HierarchicalVAE.top_model` (its top layer, the layers below at
        their conditional means), else the model itself."""
        return self.model.top_model if isinstance(self.model, HierarchicalVAE) else self.model


def checkpoint_path(location: str | Path) -> Path:
    """``location`` is a run directory (holding ``checkpoint.pt``) or a checkpoint file."""
    location = Path(location)
    if not location.is_dir():
        return location
    if not (location / CHECKPOINT_NAME).is_file():
        raise FileNotFoundError(f"{location} is a directory holding no {CHECKPOINT_NAME}; {NOT_A_CHECKPOINT}")
    return location / CHECKPOINT_NAME


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _sizes(value: object) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(map(_positive_int, value))


def _one_of(choices: Sequence[str]) -> Callable[[object], bool]:
    return lambda value: isinstance(value, str) and value in choices


def _or_none(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


def _x_shape(value: object) -> bool:
    return _sizes(value) and len(value) in (1, 3)


def _layers(value: object) -> bool:
    return _positive_int(value) and value >= 2


def _weight(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


# config key: (check, what it must be); the keys 'pyro-vae train' writes and build_pair reads
_COMMON = {
    "x_shape": (_x_shape, "a list of 1 (columns) or 3 (channels, height, width) positive integers"),
    "latent_dim": (_positive_int, "a positive integer"),
    "hidden": (_sizes, "a non-empty list of positive integers"),
    "arch": (_one_of(ARCHITECTURES), f"one of {list(ARCHITECTURES)}"),
    "likelihood": (_one_of(LIKELIHOODS), f"one of {sorted(LIKELIHOODS)}"),
}
_UNCONDITIONAL = {"guide": (_one_of(GUIDES), f"one of {sorted(GUIDES)}")}
_CONDITIONAL = {"num_classes": (_positive_int, "a positive integer")}
_HIERARCHICAL = {"layers": (_layers, "an integer ≥ 2")}
_VAMPPRIOR = {"pseudo_inputs": (_positive_int, "a positive integer")}
_OPTIONAL = {
    "model": (_one_of(MODELS), f"one of {list(MODELS)}"),
    "prior": (_one_of(PRIORS), f"one of {list(PRIORS)}"),
    "conditional": (lambda value: isinstance(value, bool), "true or false"),
    "likelihood_options": (lambda value: isinstance(value, dict), "an object of option names and values"),
    "embedding_dim": (_or_none(_positive_int), "a positive integer or null"),
    "classifier_arch": (_or_none(_one_of(ARCHITECTURES)), f"one of {list(ARCHITECTURES)} or null"),
    "classifier_hidden": (_or_none(_sizes), "a non-empty list of positive integers or null"),
    "alpha": (_weight, "a non-negative number"),
}
_NOT_FROM_TRAIN = "it was not written by this version of 'pyro-vae train', or was edited; retrain the model"


def check_config(config: dict, path: Path) -> None:
    """Refuse a stock configuration with a missing or mistyped key, naming the key, and a GAN's."""
    if config.get("model") == GAN_MODEL:
        raise ValueError(
            f"{path} is a GAN run (written by 'pyro-vae train-gan'): it has no likelihood or encoder, so only "
            "'pyro-vae sample' and 'pyro-vae train-gan --resume' read it; give a run of 'pyro-vae train'"
        )
    rules = _COMMON | (_CONDITIONAL if config.get("conditional") else _UNCONDITIONAL)
    if config.get("model") == "hierarchical":
        rules |= _HIERARCHICAL
    if config.get("prior") == "vampprior":
        rules |= _VAMPPRIOR
    for key, (check, expected) in (_OPTIONAL | rules).items():
        if key in config and not check(config[key]):
            shown = repr(config[key])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise ValueError(f"{path}: config key {key!r} is {shown}, expected {expected}; {_NOT_FROM_TRAIN}")
    missing = sorted(set(rules) - set(config))
    if missing:
        raise ValueError(f"{path}: its config lacks {missing}; {_NOT_FROM_TRAIN}")


def _stock_pair(checkpoint: Checkpoint) -> tuple[Model, Guide]:
    """The stock pair the checkpoint's config describes, with the checkpoint's parameters."""
    check_config(checkpoint.config, checkpoint.path)
    try:
        model, guide = build_pair(checkpoint.config)
    except Exception as error:  # a combination the key checks let through: the config is not a stock one
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"{checkpoint.path}: its config builds no model ({reason}); {_NOT_FROM_TRAIN}") from error
    try:
        checkpoint.load_into(model, guide)
    except ValueError as error:
        raise ValueError(f"{error}\nits config does not fit its weights; {_NOT_FROM_TRAIN}") from None
    return model, guide


def load_run(location: str | Path, device: str = "cpu") -> Run:
    """Rebuild the stock model and guide of a run and load their trained parameters.

    Raises :class:`FileNotFoundError` or :class:`ValueError` naming the file, what is wrong with
    it and what to do, for anything but a run directory or checkpoint written by ``pyro-vae train``."""
    torch_device = resolve_device(device)
    return run_from(load_checkpoint(checkpoint_path(location), map_location=torch_device), torch_device)


def run_from(checkpoint: Checkpoint, device: torch.device) -> Run:
    """The :class:`Run` of a checkpoint already read (onto ``device``), as :func:`load_run` makes it."""
    path = checkpoint.path
    model, guide = _stock_pair(checkpoint)
    model.to(device).eval()
    guide.to(device).eval()
    if checkpoint.preprocessing is None:
        raise ValueError(f"{path} stores no preprocessing; it was not written by 'pyro-vae train'")
    try:
        preprocessor = Preprocessor.from_state_dict(checkpoint.preprocessing)
    except ValueError as error:
        raise ValueError(f"{path}: {error}; {_NOT_FROM_TRAIN}") from None
    return Run(model, guide, checkpoint, preprocessor, device, path.parent)
