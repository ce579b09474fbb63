"""RSTN, the recurrent saliency transformation network (Yu et al., CVPR 2018) of the pancreas study.

One sample is a stack of 3 adjacent slices (3, Y, X) of one plane; every output has one map per slice.

    coarse FCN-8s on the whole stack          -> coarse logits, coarse = sigmoid(logits)
    saliency transformation  3x3 conv, ReLU, 5x5 conv (3 -> 3 channels; the 3x3 starts Xavier-normal with
                             bias 1, the 5x5 starts with zero weights and biases 1.0, 1.5, 2.0, so at first the
                             saliency is one constant weight per slice)
    fine input = image x saliency, cropped to the bounding box of a mask grown by a margin (clipped to the image)
    fine FCN-8s on the crop, its logits pasted back into the full frame; outside the box the fine logit is
    OUTSIDE_LOGIT (sigmoid 0)

Training modes, as the study's README and code define them (each needs the label):

    S  separate    box from the label, fine input = the plain image: the fine stage does not see the coarse one,
                   no gradient from the fine loss reaches the coarse FCN or the saliency module
    I  individual  box from the label, fine input = image x saliency(coarse): the fine *image* depends on the
                   coarse output (the fine loss trains saliency and coarse FCN through it), the *box* does not
    J  joint       box from the coarse mask (coarse >= threshold), fine input = image x saliency(coarse): image
                   and box both come from the coarse stage; when the coarse mask is empty the label's box is
                   used, and when that is empty too, the whole image

The box is never differentiable, so I and J send the fine loss's gradient to the coarse FCN the same way (through
the saliency); they differ in where the fine stage looks. The study trains S, then I, then J, with loss
1/3 Dice(coarse) + 2/3 Dice(fine) (SegCore/training/rstn.py). `training_mode` is the mode `forward` uses when it is
given none: a stage's plan sets it (model.arguments.training_mode), so plan.json records it.

Boxes are per sample: each sample's fine stage sees its own box, and its logits outside that box are OUTSIDE_LOGIT.
The study's code instead crops the whole batch to one box (around every sample's mask) and, for a batch of more
than one, zeroes each sample's input outside its own box; its fine logits inside the batch box but outside a
sample's own box are then whatever the network makes of zeros. At the study's batch size of 1 both are the same
box and the same numbers. Per-sample boxes are kept because they make a sample's result independent of what else
is in its batch (training at batch > 1, inference over several stacks at once), and because the study's batch
path fails when one sample of a batch has an empty mask (the minimum of an empty index list).

In train() the margin of each side is, with probability random_margin_prob, drawn uniformly from
[random_margin_min, random_margin_max] (the study: 0.5, [0, 2 x margin]), otherwise `margin`; in eval() it is
always `margin`. Testing: mode "coarse" (coarse FCN only), mode "oracle" (fine stage on
the label's box, the coarse saliency, as in I), `refine` (one fine step from a previous probability map) and
`iterate` (coarse-to-fine rounds until the inter-iteration Dice reaches a threshold, the study: 0.99, at most 10).
Module names match the study's code (coarse_model, saliency1, saliency2, fine_model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from SegCore.errors import SegCoreError
from SegCore.models.blocks import check_positive, check_probability
from SegCore.models.fcn8s import FCN8s
from SegCore.models.registry import register_model

TRAINING_MODES = ("S", "I", "J")
MODES = (*TRAINING_MODES, "coarse", "oracle")
OUTSIDE_LOGIT = -1.0e4  # fine logit outside the box: sigmoid is exactly 0 in float32 and it fits float16
Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open pixel ranges


def mask_box(mask: Tensor, margins: tuple[int, int, int, int]) -> Box | None:
    """Bounding box of a mask grown by margins and clipped to the image.

    mask: (C, Y, X) bool, all channels together. margins: (top, bottom, left, right) in pixels, >= 0.
    Returns (y0, y1, x0, x1) half-open, 0 <= y0 < y1 <= Y and 0 <= x0 < x1 <= X, or None for an empty mask.
    """
    plane = mask.reshape(-1, *mask.shape[-2:]).any(dim=0)
    rows = torch.nonzero(plane.any(dim=1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(plane.any(dim=0)).flatten()
    top, bottom, left, right = margins
    size_y, size_x = plane.shape
    return (max(int(rows[0]) - top, 0), min(int(rows[-1]) + bottom + 1, size_y),
            max(int(cols[0]) - left, 0), min(int(cols[-1]) + right + 1, size_x))


def inter_iteration_dice(previous: Tensor, current: Tensor) -> float:
    """Dice of two bool masks of one shape, counted over all their elements; 1.0 when both are empty."""
    total = int(previous.sum()) + int(current.sum())
    return 1.0 if total == 0 else 2.0 * int((previous & current).sum()) / total


@register_model("rstn", study="pancreas", spatial_dims=2,
                defaults={"slices": 3, "width_multiplier": 1.0, "upsampling": "bilinear", "dropout": 0.5,
                          "threshold": 0.5, "margin": 20, "random_margin_prob": 0.5, "random_margin_min": 0,
                          "random_margin_max": 40, "training_mode": "J"},
                small={"width_multiplier": 1 / 16}, example_input=(3, 512, 512),
                summary="RSTN: coarse FCN-8s, saliency transformation, fine FCN-8s on the crop; pancreas study")
class RSTN(nn.Module):
    """Recurrent saliency transformation network: coarse FCN-8s -> saliency -> crop -> fine FCN-8s.

    Args:
        slices: adjacent slices per sample = input channels = output maps (study: 3).
        width_multiplier, upsampling, dropout: of both FCN-8s (see `FCN8s`).
        threshold: probability at or above which a pixel is in a mask (boxes, iterations; study: 0.5).
        margin: pixels added on each side of a mask's bounding box (study: 20).
        random_margin_prob, random_margin_min, random_margin_max: in train(), with this probability each side's
            margin is drawn uniformly from [min, max] pixels instead (study: 0.5, 0, 40).
        training_mode: "S", "I" or "J", the mode `forward` runs when called without one (the training stage's).

    Tensors: image (N, slices, Y, X) float32, any Y, X; label (N, slices, Y, X), 1 = organ (float or bool).
    Every method returns a dict of (N, slices, Y, X) float32 maps: "coarse_logits", "coarse" (sigmoid),
    "fine_logits" (OUTSIDE_LOGIT outside the box), "fine" (sigmoid), "saliency" (when used); "box": (N, 4) int64
    on the CPU, (y0, y1, x0, x1) half-open per sample.
    """

    def __init__(self, slices: int = 3, width_multiplier: float = 1.0, upsampling: str = "bilinear",
                 dropout: float = 0.5, threshold: float = 0.5, margin: int = 20, random_margin_prob: float = 0.5,
                 random_margin_min: int = 0, random_margin_max: int = 40, training_mode: str = "J"):
        super().__init__()
        check_positive("slices", slices)
        if training_mode not in TRAINING_MODES:
            raise SegCoreError(f"unknown RSTN training_mode {training_mode!r}",
                               fix=f"use one of {', '.join(TRAINING_MODES)} (the study trains S, then I, then J)")
        self.training_mode = training_mode
        check_probability("threshold", threshold)
        if not 0.0 <= float(random_margin_prob) <= 1.0:
            raise SegCoreError(f"random_margin_prob must be in [0, 1], got {random_margin_prob!r}",
                               fix="use e.g. 0.5 (the study)")
        if not (margin >= 0 and 0 <= random_margin_min <= random_margin_max):
            raise SegCoreError(f"margins must satisfy margin >= 0 and 0 <= random_margin_min <= random_margin_max, "
                               f"got {margin}, {random_margin_min}, {random_margin_max}",
                               fix="use e.g. margin=20, random_margin_min=0, random_margin_max=40 (the study)")
        self.slices, self.threshold, self.margin = slices, float(threshold), int(margin)
        self.random_margin_prob = float(random_margin_prob)
        self.random_margin_range = (int(random_margin_min), int(random_margin_max))
        fcn = {"in_channels": slices, "out_channels": slices, "width_multiplier": width_multiplier,
               "upsampling": upsampling, "dropout": dropout}
        self.coarse_model = FCN8s(**fcn)
        self.saliency1 = nn.Conv2d(slices, slices, 3, padding=1)
        self.saliency2 = nn.Conv2d(slices, slices, 5, padding=2)
        self.fine_model = FCN8s(**fcn)
        nn.init.xavier_normal_(self.saliency1.weight)
        nn.init.ones_(self.saliency1.bias)
        nn.init.zeros_(self.saliency2.weight)
        with torch.no_grad():  # one constant weight per slice to start: 1.0, 1.5, 2.0 for 3 slices
            self.saliency2.bias.copy_(torch.linspace(1.0, 2.0, slices))

    def saliency(self, prob: Tensor) -> Tensor:
        """Saliency transformation: (N, slices, Y, X) probabilities -> (N, slices, Y, X) spatial weights."""
        return self.saliency2(F.relu(self.saliency1(prob)))

    def forward(self, image: Tensor, label: Tensor | None = None, mode: str | None = None) -> dict:
        """One training step's forward (modes S, I, J; None: `training_mode`) or a test form ("coarse",
        "oracle"); see the module doc."""
        mode = self.training_mode if mode is None else mode
        self._check(image, "image")
        if mode not in MODES:
            raise SegCoreError(f"unknown RSTN mode {mode!r}", fix=f"use one of {', '.join(MODES)}")
        coarse_logits = self.coarse_model(image)
        out = {"coarse_logits": coarse_logits, "coarse": torch.sigmoid(coarse_logits)}
        if mode == "coarse":
            return out
        if label is None:
            raise SegCoreError(f"RSTN mode {mode!r} needs the label", fix='pass label=..., or use mode="coarse"')
        self._check(label, "label", like=image)
        label_mask = label >= 0.5
        if mode == "S":
            out.update(self._fine_stage(image, [label_mask]))
            return out
        saliency = self.saliency(out["coarse"])
        masks = [out["coarse"] >= self.threshold, label_mask] if mode == "J" else [label_mask]
        out.update(self._fine_stage(image * saliency, masks), saliency=saliency)
        return out

    def refine(self, image: Tensor, previous_prob: Tensor, previous_mask: Tensor | None = None) -> dict:
        """One coarse-to-fine test step: saliency from the previous probabilities, box from the previous mask.

        previous_prob: (N, slices, Y, X) in [0, 1] (round 0: the coarse output, possibly fused over planes).
        previous_mask: (N, slices, Y, X) bool, default previous_prob >= threshold; an empty mask gives the
        whole image as box. Returns "fine_logits", "fine", "saliency", "box".
        """
        self._check(image, "image")
        self._check(previous_prob, "previous_prob", like=image)
        mask = previous_prob >= self.threshold if previous_mask is None else previous_mask.bool()
        saliency = self.saliency(previous_prob)
        return {**self._fine_stage(image * saliency, [mask]), "saliency": saliency}

    @torch.no_grad()
    def iterate(self, image: Tensor, max_iterations: int = 10, convergence_dice: float = 0.99,
                start_prob: Tensor | None = None) -> dict:
        """The study's coarse-to-fine test on one stack: refine until the masks of two rounds agree.

        Round 0 is the coarse output (or start_prob, e.g. the coarse result fused over three planes); each
        round refines from the previous round's probabilities and mask, and stops once the Dice between its mask
        and the previous one (over all N samples together) is >= convergence_dice, or after max_iterations.
        Returns "coarse" (round 0), "fine" and "mask" (last round), "inter_dice" (one float per round),
        "iterations" (rounds run) and "converged" (bool).
        """
        check_positive("max_iterations", max_iterations)
        prob = self.forward(image, mode="coarse")["coarse"] if start_prob is None else start_prob
        first, mask = prob, prob >= self.threshold
        inter_dice: list[float] = []
        while len(inter_dice) < max_iterations:
            prob = self.refine(image, prob, mask)["fine"]
            previous, mask = mask, prob >= self.threshold
            inter_dice.append(inter_iteration_dice(previous, mask))
            if inter_dice[-1] >= convergence_dice:
                break
        return {"coarse": first, "fine": prob, "mask": mask, "inter_dice": inter_dice,
                "iterations": len(inter_dice), "converged": bool(inter_dice[-1] >= convergence_dice)}

    def _fine_stage(self, fine_input: Tensor, masks: list[Tensor]) -> dict:
        """Fine FCN per sample on the box of the first non-empty mask in `masks` (else the whole image)."""
        size_y, size_x = fine_input.shape[2:]
        boxes, logits = [], []
        for n in range(fine_input.shape[0]):
            margins = self._margins()
            box = next((b for b in (mask_box(m[n], margins) for m in masks) if b is not None),
                       (0, size_y, 0, size_x))
            y0, y1, x0, x1 = box
            crop_logits = self.fine_model(fine_input[n:n + 1, :, y0:y1, x0:x1])
            logits.append(F.pad(crop_logits, (x0, size_x - x1, y0, size_y - y1), value=OUTSIDE_LOGIT))
            boxes.append(box)
        fine_logits = torch.cat(logits)
        return {"fine_logits": fine_logits, "fine": torch.sigmoid(fine_logits),
                "box": torch.tensor(boxes, dtype=torch.int64).reshape(-1, 4)}

    def _margins(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right): random in train() with random_margin_prob, else the fixed margin."""
        if self.training and float(torch.rand(())) < self.random_margin_prob:
            low, high = self.random_margin_range
            return tuple(int(v) for v in torch.randint(low, high + 1, (4,)))
        return (self.margin,) * 4

    def _check(self, x: Tensor, name: str, like: Tensor | None = None) -> None:
        if x.dim() != 4 or x.shape[1] != self.slices:
            raise SegCoreError(f"RSTN {name} must be (N, {self.slices}, Y, X), got shape {tuple(x.shape)}",
                               fix=f"stack {self.slices} adjacent slices as channels")
        if like is not None and x.shape != like.shape:
            raise SegCoreError(f"RSTN {name} has shape {tuple(x.shape)}, the image {tuple(like.shape)}",
                               fix=f"give {name} the image's shape")
