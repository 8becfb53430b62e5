"""The one LightningModule: crop -> network -> loss, with metrics, per-sample predictions and a mean-pose
reference. Models and losses are plain ``nn.Module``s built from config; nothing here is model-specific.
"""
from __future__ import annotations

import inspect
import logging
import warnings
from functools import partial
from typing import Any, Callable, Mapping

import lightning as L
import pandas as pd
import torch
from torch import Tensor, nn

from . import geometry as G
from .hardware import cpu_has_native_bf16
from .metrics import METRICS, build_metrics, compute_flat, per_sample_errors
from .models.mixed_precision import float32_strided_depthwise, to_float32
from .outputs import prediction_columns, scored_pose
from .schedules import global_batch_size, max_steps_for_samples

log = logging.getLogger(__name__)


FULL_PRECISION = ("32", "32-true", "float32", "64", "64-true", "float64")
# a rotation farther than this from SO(3) before scoring is more than float32 rounding: said in the log
ROTATION_DEFECT_WARN = 1e-4


def eval_in_full_precision(eval_precision: int | str) -> bool:
    """Whether ``model.eval_precision`` asks for evaluation outside autocast (``32``, the default) or under the
    trainer's precision (``bf16-mixed`` / ``16-mixed`` / ``trainer``: rounded numbers, for speed only)."""
    value = str(eval_precision).lower()
    if value in FULL_PRECISION:
        return True
    if value in ("trainer", "bf16", "bf16-mixed", "16", "16-mixed"):
        return False
    raise ValueError(f"model.eval_precision must be 32 (default) or trainer / bf16-mixed / 16-mixed, "
                     f"got {eval_precision!r}")

class HeadPoseModule(L.LightningModule):
    """Args:
        net: ``forward(inputs) -> pred`` with ``pred["R"] (B, 3, 3)`` and optionally ``t (B, 3)``,
            ``landmarks_2d (B, 68, 2)`` (full-image pixels), ``vertices (B, N, 3)`` (head frame, metres).
        crop: ``CropInput`` turning a batch into network inputs.
        loss: ``forward(pred, batch, inputs) -> {"loss": total, term: value, ...}`` with ``inputs`` the
            network's input (``crop(batch)``), from which a loss reads the crop it needs.
        optimizer: partial ``torch.optim`` constructor taking the parameters.
        scheduler: optional partial LR scheduler constructor taking the optimizer; a ``total_steps``
            argument, if it has one, is filled from the trainer.
        augment: optional on-device augmentation ``forward(batch) -> batch`` applied in training.
        euler_rule: per-axis reporting rule (set by the run from the data protocol when None).
        grad_clip_max_norm, grad_clip_norm_type: optional gradient clipping by
            ``torch.nn.utils.clip_grad_norm_`` with any norm (OpNet's code: 0.1 with ``inf``); Lightning's
            ``gradient_clip_val`` only offers the 2-norm and value clipping. Mutually exclusive with it.
        callbacks: Lightning callbacks that belong to the recipe (e.g. OpNet's sample-counted SWA),
            added to the trainer's through ``configure_callbacks``.
        total_samples: optional run length in training samples (OpNet's unit): at fit start ``trainer.max_steps``
            becomes ``ceil(total_samples / global batch)`` (``schedules.max_steps_for_samples``), for any batch
            size, device count and accumulation. Epoch-counted recipes set ``trainer.max_epochs`` instead.
        channels_last: keep the net's weights and input crops in ``torch.channels_last`` memory format
            (faster convolutions with oneDNN on CPU and with tensor cores under autocast; docs/performance.md).
        compile: ``torch.compile`` the net in place (``nn.Module.compile``: the state-dict keys, checkpoints
            and ONNX export are unchanged) when fitting; ``True`` or a dict of ``torch.compile`` arguments.
        fp32_strided_depthwise: under CPU autocast, run the net's strided depthwise convolutions in float32
            (``models.mixed_precision``: oneDNN's bfloat16 kernels for them are the slow ones; OpNet's
            MobileNet). No effect in float32 or on GPUs; parameter names unchanged. On in conf/ by default.
        eval_precision: ``32`` (default): validation, test and every prediction made through ``forward`` run
            the net in float32 whatever ``trainer.precision`` trains in; ``trainer`` (or ``bf16-mixed``) keeps
            the trainer's autocast, with a warning that the numbers are rounded.

    Under mixed precision (``trainer.precision=bf16-mixed`` / ``16-mixed``) only the net's trunk runs in
    autocast during training: each net runs its heads' last layers and its output geometry (6D / quaternion ->
    matrix, ray frame, box-correction translation, landmark decoding, the OpNet codec) in float32
    (``models.mixed_precision``); the loss, metrics and label geometry run outside autocast (the OpNet codec's
    3x3 solves in float64). Evaluation runs the whole net in float32 (``eval_precision``), and what is scored
    and written is ``outputs.scored_pose``: float64 proper rotations. So reduced precision speeds up training
    and never reaches a scored number.

    A scheduler factory may also take ``samples_per_step`` (the global batch: per-process batch size x
    processes x gradient accumulation), filled here, so schedules can be counted in samples.
    """

    def __init__(self, net: nn.Module, crop: nn.Module, loss: nn.Module | None = None,
                 optimizer: Callable | None = None, scheduler: Callable | None = None,
                 augment: nn.Module | None = None, euler_rule: str | None = None,
                 grad_clip_max_norm: float | None = None, grad_clip_norm_type: float | str = 2.0,
                 callbacks: list | None = None, total_samples: int | None = None,
                 channels_last: bool = False, compile: bool | Mapping[str, Any] = False,
                 fp32_strided_depthwise: bool = False, eval_precision: int | str = 32):
        super().__init__()
        self.eval_full_precision = eval_in_full_precision(eval_precision)
        if not self.eval_full_precision:
            log.warning("model.eval_precision=%s: validation and test run under the trainer's autocast, so the "
                        "reported numbers include its rounding (default 32: float32 evaluation)", eval_precision)
        self.channels_last = bool(channels_last)
        self.compile_options = (dict(compile) if isinstance(compile, Mapping) else {}) if compile else None
        self.total_samples = None if total_samples is None else int(total_samples)
        self.grad_clip_max_norm = grad_clip_max_norm
        self.grad_clip_norm_type = float(grad_clip_norm_type)  # "inf" -> math.inf
        self.recipe_callbacks = list(callbacks or [])
        self.net, self.crop, self.loss_fn, self.augment = net, crop, loss, augment
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if fp32_strided_depthwise:
            float32_strided_depthwise(self.net)
        self.optimizer_factory = optimizer or partial(torch.optim.AdamW, lr=1e-3)
        self.scheduler_factory = scheduler
        self.euler_rule = G.check_rule(euler_rule or "trg")
        self._build_metrics()
        # Running sums of training labels: the constant "mean pose" predictor every table is compared to.
        self.register_buffer("mean_R_sum", torch.zeros(3, 3, dtype=torch.float64))
        self.register_buffer("mean_t_sum", torch.zeros(3, dtype=torch.float64))
        self.register_buffer("mean_counts", torch.zeros(2, dtype=torch.float64))
        self.test_rows: list[dict[str, list]] = []
        self.test_results: dict[str, Any] | None = None
        self.test_frame: pd.DataFrame | None = None

    def _build_metrics(self) -> None:
        self.val_metrics = build_metrics(self.euler_rule)
        self.test_metrics = build_metrics(self.euler_rule)
        self.mean_pose_metrics = build_metrics(self.euler_rule)

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Predictions for a schema batch (evaluation, export, visualisation), in float32: the net runs outside
        autocast unless ``eval_precision`` says otherwise."""
        with self._full_precision():
            inputs = self.crop(batch)
            if self.eval_full_precision:
                return self._predict(inputs)
        return self._predict(inputs)

    def _predict(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        """The net on ``crop(batch)``; the only part that runs under autocast (see the class docstring)."""
        if self.channels_last:
            inputs = dict(inputs, image=inputs["image"].contiguous(memory_format=torch.channels_last))
        return to_float32(self.net(inputs))

    def _full_precision(self):
        """A context without autocast for losses and metrics (a no-op when the trainer runs 32-true)."""
        return torch.autocast(self.device.type, enabled=False)

    # -- training --------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        # The mean-pose reference is the mean of the dataset's labels, not of their augmented (rotated,
        # mirrored) versions: accumulate before augmenting.
        self._accumulate_mean_pose(batch)
        with self._full_precision():  # label transforms and crop intrinsics: no reduced precision
            if self.augment is not None:
                batch = self.augment(batch)
            inputs = self.crop(batch)
        pred = self._predict(inputs)
        with self._full_precision():
            terms = self.loss_fn(pred, batch, inputs)
        B = len(batch["sample_id"])
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=B, prog_bar=False)
        self.log("train/loss_total", terms["loss"].detach(), batch_size=B, prog_bar=True)
        return terms["loss"]

    def on_fit_start(self) -> None:
        precision = str(getattr(self.trainer, "precision", ""))
        if self.device.type == "cpu" and "bf16" in precision and not cpu_has_native_bf16():
            log.warning("trainer.precision=%s on a CPU without native bfloat16 (no avx512_bf16 / amx_bf16): its "
                        "bfloat16 convolutions are emulated and much slower than 32-true (docs/performance.md)",
                        precision)

    def on_test_start(self) -> None:
        dtypes = {p.dtype for p in self.net.parameters()}
        if self.eval_full_precision and dtypes - {torch.float32, torch.float64}:
            log.warning("the net's weights are %s (trainer.precision=%s): evaluation cannot run in float32, the "
                        "numbers include that rounding", sorted(map(str, dtypes)),
                        getattr(self.trainer, "precision", "?"))

    def on_train_start(self) -> None:
        if self.global_step > 0:  # restored from ckpt_path (docs/running.md): the tests read this line
            log.info("training resumes at global step %d", self.global_step)

    @torch.no_grad()
    def _accumulate_mean_pose(self, batch: Mapping[str, Any]) -> None:
        hR, ht = batch["has_R"], batch["has_t"]
        self.mean_R_sum += batch["R"][hR].double().sum(0)
        self.mean_t_sum += batch["t"][ht].double().sum(0)
        self.mean_counts += torch.stack([hR.sum(), ht.sum()]).double()

    def _mean_pose(self) -> tuple[Tensor | None, Tensor | None]:
        sums = torch.cat([self.mean_R_sum.flatten(), self.mean_t_sum, self.mean_counts])
        if self.trainer is not None and self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        R_sum, t_sum, n = sums[:9].view(3, 3), sums[9:12], sums[12:]
        R = G.project_to_so3((R_sum / n[0]).unsqueeze(0))[0].float() if n[0] > 0 else None
        t = (t_sum / n[1]).float() if n[1] > 0 else None
        return R, t

    # -- evaluation ------------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self(batch)
        with self._full_precision():
            self.val_metrics.update(scored_pose(pred)[0], batch)

    def on_validation_epoch_end(self) -> None:
        values = compute_flat(self.val_metrics)
        self.val_metrics.reset()
        logged = {f"val/{k}": float(v) for k, v in values.items()
                  if not (k in METRICS and METRICS[k].is_count) and v == v}  # skip NaN (metric without labels)
        if logged:
            self.log_dict(logged, sync_dist=False)  # metrics already reduced across processes

    def on_test_epoch_start(self) -> None:
        self.test_rows = []
        self._test_mean_pose = self._mean_pose()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self(batch)
        with self._full_precision():
            self._test_update(pred, batch)

    def _test_update(self, pred: dict[str, Tensor], batch: dict[str, Any]) -> None:
        # metrics and predictions.parquet read the same float64 rotations (docs/outputs.md)
        pred, defect = scored_pose(pred)
        if defect > ROTATION_DEFECT_WARN:
            log.warning("the net predicted matrices up to %.3g from a rotation (|R^T R - I|, inf = reflection); "
                        "they are scored as their nearest rotations", defect)
        self.test_metrics.update(pred, batch)
        errors = per_sample_errors(pred, batch, self.euler_rule)
        self.test_rows.append(prediction_columns(pred, batch, errors))
        R_mean, t_mean = self._test_mean_pose
        if R_mean is not None:
            B = batch["image"].shape[0]
            const = {"R": R_mean.to(self.device).expand(B, 3, 3)}
            if t_mean is not None:
                const["t"] = t_mean.to(self.device).expand(B, 3)
            self.mean_pose_metrics.update(const, batch)

    def on_test_epoch_end(self) -> None:
        metrics = compute_flat(self.test_metrics)
        mean_pose = compute_flat(self.mean_pose_metrics) if self._test_mean_pose[0] is not None else {}
        self.test_metrics.reset()
        self.mean_pose_metrics.reset()
        rows = self.test_rows
        if self.trainer is not None and self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        frames = [pd.DataFrame(r) for r in rows]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if len(frame):
            frame = frame.sort_values("sample_id", kind="stable").reset_index(drop=True)
        metrics["num_samples"] = int(len(frame))
        self.test_results = {"metrics": metrics, "mean_pose": mean_pose}
        self.test_frame = frame
        self.test_rows = []

    # -- optimisation ----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.compile_options is not None:
            self.net.compile(**self.compile_options)  # in place: parameter names stay net.*
        # Before configure_optimizers (Lightning calls setup first), so the schedules see the step count.
        if stage == "fit" and self.total_samples is not None:
            steps = max_steps_for_samples(self.trainer, self.total_samples)
            log.info("run length: %d samples = %d optimizer steps of %d samples", self.total_samples, steps,
                     global_batch_size(self.trainer))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self._build_scheduler(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _build_scheduler(self, optimizer, total_steps: int):
        kwargs = {}
        target = getattr(self.scheduler_factory, "func", self.scheduler_factory)
        params = inspect.signature(target).parameters
        if "total_steps" in params:
            kwargs["total_steps"] = int(total_steps)
        if "samples_per_step" in params:
            kwargs["samples_per_step"] = global_batch_size(self.trainer)
        return self.scheduler_factory(optimizer, **kwargs)

    def replan_schedule(self, total_steps: int) -> None:
        """Rebuild the LR schedule for a run of ``total_steps`` optimizer steps, at the step it has reached
        (``callbacks.TimeBudget``: the demo's length fitted to the measured step time). The schedule's shape
        is kept, stretched or shrunk to the new length; the steps already taken are replayed so that the
        learning rate continues from the new schedule's value at this step."""
        configs = self.trainer.lr_scheduler_configs if self.scheduler_factory is not None else []
        if not configs:
            return
        old = configs[0].scheduler
        with warnings.catch_warnings():  # replaying steps is not an optimizer step skipped
            warnings.simplefilter("ignore", UserWarning)
            new = self._build_scheduler(old.optimizer, total_steps)
            for _ in range(max(0, int(old.last_epoch))):
                new.step()
        configs[0].scheduler = new

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self.grad_clip_max_norm is None:
            self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                                gradient_clip_algorithm=gradient_clip_algorithm)
            return
        if gradient_clip_val:
            raise ValueError("set either trainer.gradient_clip_val or model.grad_clip_max_norm, not both")
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.grad_clip_max_norm, norm_type=self.grad_clip_norm_type)

    def configure_callbacks(self) -> list:
        return self.recipe_callbacks
