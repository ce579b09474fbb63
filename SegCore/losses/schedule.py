"""The weight schedule of a hybrid (region + boundary) loss, as explicit state that a checkpoint can hold.

A hybrid loss is alpha * region + (1 - alpha) * boundary (Kervadec et al.'s "rebalance" form). The schedule
gives alpha for each epoch:

- mode "ramp" (Kervadec et al. 2019/2021): alpha goes linearly from alpha_start at epoch 0 to alpha_end at epoch
  ramp_epochs and stays there: alpha(e) = alpha_start + (alpha_end - alpha_start) * min(e / ramp_epochs, 1).
  Kervadec et al.: alpha_start=1, alpha_end=0.01, one step of 0.01 per epoch (ramp_epochs=99).
- mode "dice_threshold" (the atrium study's README: the boundary loss "takes greater precedence after a threshold
  Dice score has been attained"): alpha stays alpha_start (boundary off when 1) until an epoch whose validation
  Dice reaches dice_threshold; from the next epoch on, the same ramp runs from that epoch:
  alpha(e) = alpha_start + (alpha_end - alpha_start) * min((e - s + 1) / ramp_epochs, 1) for e >= s, where s is
  the first epoch after the threshold was reached. ramp_epochs=0 switches straight to alpha_end. Once switched on
  it stays on, even if the validation Dice drops again.

Epochs count from 0. Call `step_epoch(epoch, val_dice)` once after each finished epoch (and its validation);
`alpha` is then the weight for the next epoch.
"""

from __future__ import annotations

from SegCore.errors import SegCoreError

MODES = ("ramp", "dice_threshold")
_CONFIG_KEYS = ("mode", "alpha_start", "alpha_end", "ramp_epochs", "dice_threshold")


class HybridSchedule:
    """alpha per epoch for a hybrid loss alpha * region + (1 - alpha) * boundary; see the module docstring.

    Args:
        mode: "ramp" or "dice_threshold".
        alpha_start, alpha_end: alpha at the start and end of the ramp, each in [0, 1].
        ramp_epochs: epochs the ramp takes (>= 0; 0 = jump).
        dice_threshold: validation Dice (0..1) that switches the boundary term on; required by "dice_threshold".
    """

    def __init__(self, mode: str = "ramp", alpha_start: float = 1.0, alpha_end: float = 0.01,
                 ramp_epochs: int = 99, dice_threshold: float | None = None):
        if mode not in MODES:
            raise SegCoreError(f"unknown hybrid schedule mode {mode!r}", fix=f"use one of {', '.join(MODES)}")
        for name, value in (("alpha_start", alpha_start), ("alpha_end", alpha_end)):
            if not 0.0 <= value <= 1.0:
                raise SegCoreError(f"{name} must be in [0, 1], got {value}")
        if int(ramp_epochs) != ramp_epochs or ramp_epochs < 0:
            raise SegCoreError(f"ramp_epochs must be an integer >= 0, got {ramp_epochs}")
        if mode == "dice_threshold":
            if dice_threshold is None or not 0.0 <= dice_threshold <= 1.0:
                raise SegCoreError(f"mode 'dice_threshold' needs dice_threshold in [0, 1], got {dice_threshold}")
        elif dice_threshold is not None:
            raise SegCoreError("dice_threshold is only used by mode 'dice_threshold'",
                               fix="pass mode='dice_threshold' or leave dice_threshold out")
        self.mode = mode
        self.alpha_start, self.alpha_end = float(alpha_start), float(alpha_end)
        self.ramp_epochs = int(ramp_epochs)
        self.dice_threshold = None if dice_threshold is None else float(dice_threshold)
        self.epochs_done = 0  # epochs finished so far; the next epoch to train has this index
        self.switch_epoch: int | None = 0 if mode == "ramp" else None  # first epoch of the ramp

    def alpha_at(self, epoch: int) -> float:
        """alpha for epoch `epoch` given what the schedule knows now."""
        if self.switch_epoch is None or epoch < self.switch_epoch:
            return self.alpha_start
        steps = epoch - self.switch_epoch + (0 if self.mode == "ramp" else 1)
        fraction = 1.0 if self.ramp_epochs == 0 else min(steps / self.ramp_epochs, 1.0)
        return self.alpha_start + (self.alpha_end - self.alpha_start) * fraction

    @property
    def alpha(self) -> float:
        """alpha (weight of the region term) for the next epoch to train."""
        return self.alpha_at(self.epochs_done)

    @property
    def boundary_on(self) -> bool:
        return self.alpha < 1.0

    def step_epoch(self, epoch: int, val_dice: float | None = None) -> float:
        """Record that epoch `epoch` finished with validation Dice `val_dice` (None: not validated); return alpha."""
        if epoch != self.epochs_done:
            raise SegCoreError(f"hybrid schedule: step_epoch({epoch}) after {self.epochs_done} finished epochs",
                               fix="call step_epoch once per epoch in order; to resume, load_state_dict first")
        if (self.mode == "dice_threshold" and self.switch_epoch is None and val_dice is not None
                and float(val_dice) >= self.dice_threshold):
            self.switch_epoch = epoch + 1
        self.epochs_done = epoch + 1
        return self.alpha

    def state_dict(self) -> dict:
        """Plain JSON-able state (settings and progress) for a checkpoint."""
        return {"mode": self.mode, "alpha_start": self.alpha_start, "alpha_end": self.alpha_end,
                "ramp_epochs": self.ramp_epochs, "dice_threshold": self.dice_threshold,
                "epochs_done": self.epochs_done, "switch_epoch": self.switch_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; the settings must match this schedule's."""
        missing = [k for k in (*_CONFIG_KEYS, "epochs_done", "switch_epoch") if k not in state]
        if missing:
            raise SegCoreError(f"hybrid schedule state lacks {', '.join(missing)}",
                               fix="pass the dict that HybridSchedule.state_dict() returned")
        mine = self.state_dict()
        differ = [f"{k}: checkpoint {state[k]!r}, now {mine[k]!r}" for k in _CONFIG_KEYS if state[k] != mine[k]]
        if differ:
            raise SegCoreError(f"the saved hybrid schedule has other settings ({'; '.join(differ)})",
                               fix="build the schedule with the checkpoint's settings to resume it")
        self.epochs_done = int(state["epochs_done"])
        self.switch_epoch = None if state["switch_epoch"] is None else int(state["switch_epoch"])

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.state_dict().items())
        return f"HybridSchedule({settings})"
