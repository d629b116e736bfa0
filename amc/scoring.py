"""Scoring a pruned network on the search split: the accuracy an episode's reward is built from.

The search split (held out of the training images) is decoded and normalised once; each
episode prunes the model (the environment cuts a smaller copy), optionally recalibrates
BatchNorm statistics on a few calibration batches, and measures top-1 accuracy. The test
split is never touched here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from amc.data import Dataset
from amc.data.base import to_tensor
from amc.train import recalibrate_bn_on

DEFAULT_BATCH = 500
"""Images per scoring forward pass with several CPU threads or on a GPU."""
CPU_SINGLE_THREAD_BATCH = 100
"""Images per scoring forward pass on one CPU thread: ResNet-20 and MobileNet-V1 score 2,000
images about 30 % faster than in batches of 500, with bit-identical outputs."""
RACE_SLICE = 200
"""Images a racing episode scores between two checks of whether it can still reach the bar."""
RACE_Z = 3.0
"""Standard errors in a race's upper confidence bound: a racing episode stops only when even
an accuracy this far above its running estimate on the images not scored yet falls short."""


@dataclass
class ScoringConfig:
    """How an episode is scored; its defaults are also :class:`~amc.envs.config.EnvConfig`'s.

    Attributes:
        images: Search-split images scored per episode.
        selection_images: Further search-split images, disjoint from those, on which the final
            candidates of a search are re-scored (0: none).
        batch_size: Images per forward pass; ``None`` picks :data:`CPU_SINGLE_THREAD_BATCH` on a
            single CPU thread (activations small enough to stay in cache) and
            :data:`DEFAULT_BATCH` otherwise (fewer, larger operations for several threads or a
            GPU). Accuracies do not depend on it.
        recalibrate: Re-estimate BatchNorm statistics before scoring.
        recalibration_images: Calibration images for that.
        calibration_images: Images whose layer inputs feed least-squares reconstruction.
        seed: Seed of the calibration sample.
    """

    images: int = 1000
    selection_images: int = 0
    batch_size: int | None = None
    recalibrate: bool = True
    recalibration_images: int = 512
    calibration_images: int = 256
    seed: int = 0


def calibration_images(
    dataset: Dataset, count: int, spare: np.ndarray | None = None, seed: int = 0
) -> Tensor:
    """Normalised calibration images, never the scored ones.

    From ``train`` when the dataset has it (a seeded random sample); otherwise (the bundled
    sample) from the search images listed in ``spare``, those not used for scoring, or from a
    seeded random sample of all search images. Splits are stored class by class, so a sample
    must be random: the first images would all show the first classes and skew BatchNorm.
    """
    gen = torch.Generator().manual_seed(seed)
    if "train" in dataset.splits:
        data = dataset.split("train")
        idx = torch.randperm(len(data), generator=gen)[:count].numpy()
    else:
        data = dataset.split("search")
        idx = torch.randperm(len(data), generator=gen).numpy() if spare is None else np.asarray(spare)
        if len(idx) < count:
            raise ValueError(
                f"only {len(idx)} search images are left for calibration after scoring, "
                f"{count} needed; score fewer images (--search-images, --selection-images)"
            )
        idx = np.sort(idx[:count])
    return to_tensor(data.images[idx], dataset.mean, dataset.std)


@dataclass
class Race:
    """Stop scoring an episode as soon as it cannot reach a bar (the search's current finalists).

    Scoring goes ``slice`` images at a time; after each slice the episode's final accuracy on
    all the images is bounded from above: the images scored so far count as they are, the rest
    at the running accuracy plus ``z`` standard errors of the difference between the two
    parts. Once that bound does not reach the bar, the episode stops with its running accuracy.
    The images are a seeded random order, so every slice is a random sample of them.

    Attributes:
        reaches: Whether a final accuracy (%) would still reach the bar.
        slice: Images scored between two checks.
        z: Standard errors in the upper bound (see :data:`RACE_Z`).
        scored: Images scored when the race stopped early, ``None`` if the episode scored all
            of them (set by :meth:`Scorer.accuracy`).
    """

    reaches: Callable[[float], bool]
    slice: int = RACE_SLICE
    z: float = RACE_Z
    scored: int | None = None

    def upper_bound(self, correct: int, seen: int, total: int) -> float:
        """Upper bound (%) of the accuracy on ``total`` images, ``correct`` of the first ``seen`` right."""
        rest = total - seen
        p = correct / seen
        spread = math.sqrt(max(p * (1 - p), 1 / seen) * (1 / seen + 1 / rest))
        return 100.0 * (correct + rest * min(1.0, p + self.z * spread)) / total

    def hopeless(self, correct: int, seen: int, total: int) -> bool:
        """Whether an episode with ``correct`` of ``seen`` images right can no longer reach the bar."""
        return seen < total and not self.reaches(self.upper_bound(correct, seen, total))


class Scorer:
    """Accuracy of (pseudo-)pruned networks on a fixed, seeded slice of the search split.

    Args:
        dataset: Dataset with a ``search`` split.
        config: Scoring settings.
        device: Torch device of the model.
    """

    def __init__(
        self,
        dataset: Dataset,
        config: ScoringConfig | None = None,
        device: str | torch.device = "cpu",
    ):
        self.config = config or ScoringConfig()
        self.dataset = dataset
        self.device = torch.device(device)
        search = dataset.split("search")
        n = min(self.config.images, len(search))
        m = min(self.config.selection_images, len(search) - n)
        order = torch.randperm(len(search), generator=torch.Generator().manual_seed(self.config.seed)).numpy()
        # Splits are stored class by class: score seeded random subsets. The episode images come
        # first, the selection images last, and the rest (spare) is left for calibration.
        self.index, self.spare_index = order[:n], order[n : len(search) - m]
        self.selection_index = order[len(search) - m :]
        self.sets = {
            "search": self._load(search, self.index),
            "selection": self._load(search, self.selection_index),
        }
        self.recalibration = None
        if self.config.recalibrate:
            self.recalibration = calibration_images(
                dataset, self.config.recalibration_images, self.spare_index, self.config.seed + 1
            ).to(self.device)

    @property
    def batch_size(self) -> int:
        """Images per forward pass (see :attr:`ScoringConfig.batch_size`)."""
        if self.config.batch_size is not None:
            return self.config.batch_size
        single = self.device.type == "cpu" and torch.get_num_threads() == 1
        return CPU_SINGLE_THREAD_BATCH if single else DEFAULT_BATCH

    def _load(self, split, index: np.ndarray) -> tuple[Tensor, Tensor]:
        images = to_tensor(split.images[index], self.dataset.mean, self.dataset.std).to(self.device)
        return images, torch.from_numpy(split.labels[index]).to(self.device)

    @torch.no_grad()
    def accuracy(self, model: nn.Module, on: str = "search", race: Race | None = None) -> float:
        """Top-1 accuracy (%) of ``model``, as it is, on the ``search`` or ``selection`` images.

        With a ``race`` the scoring stops as soon as the episode cannot reach the race's bar,
        and returns the accuracy on the images scored until then (``race.scored``).
        """
        images, labels = self.sets[on]
        total = len(labels)
        if not total:
            raise ValueError(f"no {on} images to score (ScoringConfig.images or selection_images is 0)")
        model.eval()
        correct = seen = 0
        batch = self.batch_size if race is None else min(self.batch_size, race.slice)
        for x, y in zip(images.split(batch), labels.split(batch), strict=True):
            correct += (model(x).argmax(1) == y).sum().item()
            seen += len(y)
            if race is not None and race.hopeless(correct, seen, total):
                race.scored = seen
                break
        return 100.0 * correct / seen

    @property
    def has_selection(self) -> bool:
        """Whether final candidates can be re-scored on selection images."""
        return len(self.sets["selection"][1]) > 0

    def recalibrate(self, model: nn.Module) -> nn.Module:
        """Re-estimate ``model``'s BatchNorm statistics on the recalibration images (if configured)."""
        if self.recalibration is not None:
            recalibrate_bn_on(model, self.recalibration, 256)
        return model

    def evaluate(self, model: nn.Module, on: str = "search", race: Race | None = None) -> float:
        """Optionally recalibrate BatchNorm statistics, then return top-1 accuracy (%) on ``on``."""
        return self.accuracy(self.recalibrate(model), on, race)


Evaluate = Callable[[nn.Module], float]
"""A user's evaluation: the model (pruned, in eval mode) -> a score, higher is better."""


def calibration_batch(calibration: Tensor | Iterable, max_images: int = 1024) -> Tensor:
    """The first ``max_images`` inputs of ``calibration`` as one tensor.

    ``calibration`` is a tensor of inputs or an iterable of batches: tensors, or ``(inputs,
    targets, ...)`` tuples as a classification ``DataLoader`` yields them.
    """
    if isinstance(calibration, Tensor):
        return calibration[:max_images]
    parts, count = [], 0
    for batch in calibration:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise TypeError(
                f"calibration batches must be tensors or (inputs, ...) tuples, got {type(x).__name__}"
            )
        parts.append(x[: max_images - count])
        count += len(parts[-1])
        if count >= max_images:
            break
    if not parts:
        raise ValueError("calibration holds no inputs: pass a tensor or an iterable of input batches")
    return torch.cat(parts)


class EvaluatorScorer:
    """Scores pruned networks with the user's own evaluation function instead of a dataset.

    Rewards read scores as top-1 percentages, so the value of ``evaluate`` (in any unit,
    higher is better: top-1 %, mAP, minus a loss) is normalised against the dense model's:
    ``100 * (1 + (v - v_dense) / |v_dense|)``. The dense model scores 100, and a model that
    loses a tenth of the dense model's score scores 90, whatever the unit.

    Args:
        model: The dense network (scored once here, for the normalisation).
        evaluate: Scores a pruned copy during the search.
        selection: Scores the final candidates (other data than ``evaluate``'s); ``None``
            keeps the best episode as it is.
        recalibration: Inputs on which BatchNorm statistics are re-estimated before each
            score; ``None`` scores without recalibration.
    """

    def __init__(
        self,
        model: nn.Module,
        evaluate: Evaluate,
        selection: Evaluate | None = None,
        recalibration: Tensor | None = None,
    ):
        self.functions = {"search": evaluate, "selection": selection}
        self.recalibration = recalibration
        self.dense = {on: self._raw(model.eval(), on) for on, fn in self.functions.items() if fn is not None}
        for on, value in self.dense.items():
            if value == 0:
                raise ValueError(
                    f"the {on} evaluation returned 0 for the dense model, so scores cannot be "
                    "normalised against it: return a score whose dense value is not 0"
                )

    @property
    def has_selection(self) -> bool:
        """Whether final candidates can be re-scored on other data."""
        return self.functions["selection"] is not None

    def _raw(self, model: nn.Module, on: str) -> float:
        fn = self.functions[on]
        if fn is None:
            raise ValueError(f"no {on} evaluation was given")
        with torch.no_grad():
            value = float(fn(model.eval()))
        if math.isnan(value):
            raise ValueError(f"the {on} evaluation returned NaN")
        return value

    def recalibrate(self, model: nn.Module) -> nn.Module:
        """Re-estimate ``model``'s BatchNorm statistics on the calibration inputs (if given)."""
        if self.recalibration is not None:
            recalibrate_bn_on(model, self.recalibration, 256)
        return model

    def evaluate(self, model: nn.Module, on: str = "search", race: Race | None = None) -> float:
        """The normalised score of ``model`` (the dense model: 100) after recalibration.

        A ``race`` is ignored: the user's evaluation is one call, scored whole.
        """
        value = self._raw(self.recalibrate(model), on)
        dense = self.dense[on]
        return 100.0 * (1.0 + (value - dense) / abs(dense))
