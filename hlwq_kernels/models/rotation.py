"""Hadamard rotations folded into the weights offline: the rotated model computes the same
function as the original and stays a plain checkpoint (no online transform).

R1 rotates the residual stream by an orthogonal ``Q`` (hidden size): ``Q = diag(s)·(I ⊗ H_b)ᵀ/√b``,
a block-diagonal Hadamard of order ``b`` with random signs ``s = random_signs(hidden, seed)``; the
library's ``fwht(x, block_size=b, signs=s)`` computes ``x·Q`` along a dimension. With the stream
``h`` replaced by ``h·Q``:

- every residual-stream RMSNorm is folded into the layers it feeds (``W·diag(γ)``, where
  ``γ = w`` or ``1 + w`` by architecture) and set to identity (``w = 1``, or ``w = 0``); RMSNorm
  commutes with ``Q`` because ``Q`` keeps the root mean square;
- layers reading the stream get ``W·Q`` (input side): attention and gated delta-net input
  projections, MLP gate/up, experts, MoE routers and shared-expert gates;
- layers writing it get ``Qᵀ·W`` and ``b·Q`` (output side): ``o_proj``, ``down_proj``, experts' and
  shared experts' down projections, the gated delta-net ``out_proj``;
- embeddings ``E·Q``; the head ``W·diag(γ_final)·Q``, written explicitly when it was tied.

R2 rotates each attention head's values by ``Q2`` (order ``head_dim``, signs from ``seed + 1``),
the same for every head, so grouped-query attention is respected: ``v_proj`` gets ``Q2ᵀ·W`` per
head (and its bias), ``o_proj`` gets ``W·Q2`` per head on its input side.

Driven by tensor names (tables in ``models/families.py``): ``rotation_plan(config, shapes)``
classifies every tensor, refusing an architecture or tensor it cannot rotate exactly; then
``plan.transform(name, tensor, aux)`` maps one source tensor to its output tensors, with ``aux``
holding the norm weights named by ``plan.aux_names(name)``, so a converter can stream.
``hlwq_kernels.checkpoint.rotate.rotate_checkpoint`` writes a rotated safetensors checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch

from hlwq_kernels.models.families import (
    MULTIMODAL, REFUSED, Family, VisionLanguage, family_for, supported_model_types, vision_language_for,
)
from hlwq_kernels.ops.fwht import fwht
from hlwq_kernels.ops.hadamard import is_hadamard_size, random_signs

__all__ = ["RotationError", "Rotation", "RotationPlan", "rotation_plan"]

LM_HEAD = "lm_head.weight"
# The language model's tensors sit under model.language_model. (transformers 5's vision-language
# checkpoints) or model.; a vision tower under model.visual. or visual.
NESTED_TEXT_PREFIX = "model.language_model."
VISION = re.compile(r"(?:model\.)?visual\.(.+)")
CONFIG_KEY = "hlwq_rotation"


class RotationError(ValueError):
    """An architecture, option or tensor that cannot be rotated exactly; the message says why."""


@dataclass(frozen=True)
class Rotation:
    """The orthogonal ``Q = diag(signs)·(I ⊗ H_block)ᵀ/√block`` of order ``size``."""

    size: int
    block: int
    seed: int
    per_head: bool = False  # applied to each consecutive run of ``size`` (R2) rather than once (R1)

    @property
    def signs(self) -> torch.Tensor:
        """The ±1 vector ``s`` (length ``size``)."""
        return random_signs(self.size, self.seed)

    def fits(self, length: int) -> bool:
        """Whether a dimension of ``length`` can be rotated."""
        return length % self.size == 0 if self.per_head else length == self.size

    def apply(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """``t`` with every vector along ``dim`` multiplied on the right by ``Q`` (by ``Q`` on each
        run of ``size`` when ``per_head``)."""
        if not self.fits(t.shape[dim]):
            raise RotationError(f"dimension {dim} of shape {tuple(t.shape)} does not fit a rotation of size {self.size}")
        signs = self.signs.repeat(t.shape[dim] // self.size)
        return fwht(t, dim=dim, block_size=self.block, signs=signs)

    def record(self) -> dict:
        """The parameters that rebuild ``Q``."""
        return {"size": self.size, "block_size": self.block, "seed": self.seed, "per_head": self.per_head,
                "signs": "hlwq_kernels.random_signs(size, seed)"}


@dataclass(frozen=True)
class Action:
    """What happens to one tensor. Weights are ``[..., out, in]``, biases ``[out]``.

    ``fold``: the norm weight multiplied into the input side; ``inputs`` / ``outputs``: rotations
    applied on the input / output side; ``identity``: the value that makes a norm an identity;
    ``tied_head``: the embedding also produces the (untied) head.
    """

    fold: str | None = None
    inputs: tuple[Rotation, ...] = ()
    outputs: tuple[Rotation, ...] = ()
    identity: float | None = None
    tied_head: bool = False

    @property
    def changes(self) -> bool:
        return bool(self.fold or self.inputs or self.outputs or self.identity is not None)


KEEP = Action()


@dataclass
class RotationPlan:
    """Per-tensor actions of a rotation (see ``rotation_plan``)."""

    model_type: str
    r1: Rotation | None
    r2: Rotation | None
    unit_offset: bool
    final_norm: str
    actions: dict[str, Action]
    notes: list[str] = field(default_factory=list)

    def aux_names(self, name: str) -> tuple[str, ...]:
        """The norm weights ``transform(name, ...)`` needs in ``aux``."""
        action = self._action(name)
        needed = (action.fold,) if action.fold else ()
        return needed + ((self.final_norm,) if action.tied_head else ())

    def all_aux_names(self) -> list[str]:
        """Every norm weight some transform needs (small: 1-D tensors of the hidden size)."""
        return sorted({n for name in self.actions for n in self.aux_names(name)})

    def output_names(self, name: str) -> list[str]:
        """The tensors ``transform(name, ...)`` returns, in order (each of the source's shape)."""
        return [name] + ([LM_HEAD] if self._action(name).tied_head else [])

    def transform(self, name: str, tensor: torch.Tensor, aux: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """The output tensors of source tensor ``name``, on its device (CUDA tensors use the FWHT
        kernel). Changed tensors are computed and returned in float32 (float64 for float64 input),
        for the caller to round once; others as given."""
        action = self._action(name)
        if not action.changes:
            return [(name, tensor)]
        compute = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        if action.identity is not None:
            return [(name, torch.full(tensor.shape, action.identity, dtype=compute, device=tensor.device))]
        x = tensor.to(compute)
        out = [(name, self._apply(action, x, aux, name))]
        if action.tied_head:
            out.append((LM_HEAD, self._apply(Action(fold=self.final_norm, inputs=(self.r1,)), x, aux, name)))
        return out

    def rotated_config(self, config: Mapping) -> dict:
        """``config`` with the rotation recorded under ``hlwq_rotation`` and, after R1, the head
        untied (``tie_word_embeddings: false``)."""
        out = dict(config)
        if self.r1 is not None:
            out["tie_word_embeddings"] = False
            if isinstance(out.get("text_config"), Mapping):
                out["text_config"] = dict(out["text_config"], tie_word_embeddings=False)
        out[CONFIG_KEY] = self.record()
        return out

    def record(self) -> dict:
        """What was rotated, with the seeds and block sizes that reproduce it."""
        return {
            "r1": None if self.r1 is None else self.r1.record(),
            "r2": None if self.r2 is None else self.r2.record(),
            "transform": "x·diag(signs)·(I ⊗ H_block)ᵀ/sqrt(block) = hlwq_kernels.fwht(x, block_size, signs)",
            "notes": list(self.notes),
        }

    def _action(self, name: str) -> Action:
        try:
            return self.actions[name]
        except KeyError:
            raise RotationError(f"tensor {name!r} is not in the rotation plan") from None

    def _apply(self, action: Action, x: torch.Tensor, aux: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
        is_bias = x.ndim == 1
        if action.fold and not is_bias:
            if action.fold not in aux:
                raise RotationError(f"rotating {name!r} needs the norm weight {action.fold!r} in aux")
            x = x * self.norm_scale(aux[action.fold]).to(device=x.device, dtype=x.dtype)
        for rot in action.inputs if not is_bias else ():
            x = rot.apply(x, -1)
        for rot in action.outputs:
            x = rot.apply(x, -1 if is_bias else -2)
        return x

    def norm_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """The per-channel factor a norm multiplies by: ``w``, or ``1 + w`` for (1 + w) norms."""
        w = weight.to(torch.float64)
        return 1.0 + w if self.unit_offset else w


def _module_regex(patterns: Iterable[str], tail: str) -> re.Pattern:
    return re.compile("(?:" + "|".join(f"(?:{p})" for p in patterns) + ")" + tail)


def _refusal(config: Mapping) -> str | None:
    model_type = str(config.get("model_type", ""))
    if model_type in REFUSED:
        return REFUSED[model_type]
    if any(k in config for k in ("text_config", "vision_config", "audio_config")):
        if vision_language_for(model_type) is None or not isinstance(config.get("text_config"), Mapping):
            return MULTIMODAL.format(supported=", ".join(sorted(t for t in supported_model_types() if vision_language_for(t))))
        config = config["text_config"]
    if family_for(str(config.get("model_type", ""))) is None:
        return f"there is no rotation table for it (supported: {', '.join(supported_model_types())})"
    return None


def _r1_rotation(hidden: int, block_size: int | None, seed: int) -> Rotation:
    block = hidden if block_size is None else int(block_size)
    if block < 1 or hidden % block or not is_hadamard_size(block):
        options = [d for d in range(1, hidden + 1) if hidden % d == 0 and d >= 16 and is_hadamard_size(d)]
        raise RotationError(
            f"block_size {block_size} cannot rotate hidden size {hidden}: a block must divide it and be a "
            f"buildable Hadamard order (here: {', '.join(map(str, options)) or 'none'}; None = the full size)"
        )
    return Rotation(hidden, block, seed)


def _head_dim(config: Mapping) -> int:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if not is_hadamard_size(head_dim):
        raise RotationError(f"head_dim {head_dim} is not a buildable Hadamard order: R2 cannot rotate it (pass r2=False)")
    return int(head_dim)


class _Classifier:
    """Maps tensor names to actions with one family's table (and a vision-language table)."""

    def __init__(self, family: Family, vision: VisionLanguage | None, r1: Rotation | None, r2: Rotation | None,
                 names: Iterable[str]):
        names = set(names)
        self.r1, self.r2, self.tied = r1, r2, LM_HEAD not in names
        self.prefix = NESTED_TEXT_PREFIX if any(n.startswith(NESTED_TEXT_PREFIX) for n in names) else "model."
        self.embed, self.final_norm = f"{self.prefix}embed_tokens.weight", f"{self.prefix}norm.weight"
        self.layer = re.compile(re.escape(self.prefix) + r"layers\.(\d+)\.(.+)")
        self.norms = {norm: _module_regex(readers, r"(?:\.weight|\.bias)?") for norm, readers in family.norm_readers.items()}
        self.writers = _module_regex(family.writers, r"(?:\.weight|\.bias)?")
        self.inert = _module_regex(family.inert, r"(?:\..+)?")
        self.norm_names = _module_regex([re.escape(n) for n in family.norm_readers], r"\.weight")
        self.mergers = _module_regex(vision.mergers, r"\.(?:weight|bias)") if vision else None
        self.identity = 0.0 if family.unit_offset else 1.0

    def action(self, name: str) -> Action | None:
        r1 = (self.r1,) if self.r1 else ()
        if name == self.embed:
            return Action(inputs=r1, tied_head=bool(r1) and self.tied)
        if name == self.final_norm:
            return Action(identity=self.identity) if r1 else KEEP
        if name == LM_HEAD:
            return Action(fold=self.final_norm, inputs=r1) if r1 else KEEP
        if name == "lm_head.bias":
            return KEEP
        vision = VISION.fullmatch(name) if self.mergers else None
        if vision:  # the tower keeps its own basis; only what it writes into the stream turns
            return Action(outputs=r1) if self.mergers.fullmatch(vision.group(1)) else KEEP
        m = self.layer.fullmatch(name)
        if m is None:
            return None
        layer, rel = m.groups()
        if self.norm_names.fullmatch(rel):
            return Action(identity=self.identity) if r1 else KEEP
        r2_out = (self.r2,) if self.r2 and rel.startswith("self_attn.v_proj.") else ()
        r2_in = (self.r2,) if self.r2 and rel.startswith("self_attn.o_proj.") else ()
        for norm, readers in self.norms.items():
            if readers.fullmatch(rel):
                fold = f"{self.prefix}layers.{layer}.{norm}.weight" if r1 else None
                return Action(fold=fold, inputs=r1, outputs=r2_out)
        if self.writers.fullmatch(rel):
            return Action(inputs=r2_in, outputs=r1)
        if self.inert.fullmatch(rel):
            return KEEP
        return None


def _check_shape(name: str, shape: Sequence[int], action: Action) -> None:
    """The rotated dimensions of ``name`` fit the rotations (a wrong table or checkpoint fails
    here, before anything is written): R1 needs the hidden size, R2 a multiple of the head size."""
    is_bias = len(shape) == 1
    sides = [] if is_bias else [(-1, r) for r in action.inputs]
    sides += [(-1 if is_bias else -2, r) for r in action.outputs]
    for dim, rot in sides:
        if len(shape) < -dim or not rot.fits(shape[dim]):
            raise RotationError(f"tensor {name!r} of shape {tuple(shape)}: dimension {dim} must be "
                                + (f"a multiple of {rot.size}" if rot.per_head else f"{rot.size}"))
    if action.identity is not None and not is_bias:
        raise RotationError(f"norm {name!r} of shape {tuple(shape)} is not a vector")


def rotation_plan(
    config: Mapping,
    shapes: Mapping[str, Sequence[int]],
    *,
    seed: int = 0,
    block_size: int | None = 128,
    r1: bool = True,
    r2: bool = True,
) -> RotationPlan:
    """Classify every tensor of a checkpoint (``shapes``: name -> shape) for rotation.

    ``block_size``: R1's Hadamard block (a buildable order dividing the hidden size; None = the
    full size). ``r2``: rotate each attention head where that is exact (skipped, with a note in
    the record, for architectures where it is not). Raises RotationError naming what blocks an
    architecture, an option or a tensor.
    """
    model_type = str(config.get("model_type", ""))
    reason = _refusal(config)
    if reason:
        raise RotationError(f"cannot rotate model_type {model_type!r}: {reason}")
    vision = vision_language_for(model_type) if "text_config" in config else None
    text = config["text_config"] if vision else config
    family = family_for(str(text["model_type"]))
    assert family is not None
    if r1 and family.r1_blocker:
        raise RotationError(f"cannot fold R1 into model_type {model_type!r}: {family.r1_blocker}")
    notes = []
    if r2 and family.r2_blocker:
        notes.append(f"R2 not applied to {model_type}: {family.r2_blocker}")
        r2 = False
    if not (r1 or r2):
        raise RotationError(f"nothing to rotate in model_type {model_type!r}: R1 is off and " + (notes or ["R2 is off"])[0])
    rot1 = _r1_rotation(int(text["hidden_size"]), block_size, seed) if r1 else None
    rot2 = None
    if r2:
        head_dim = _head_dim(text)
        rot2 = Rotation(head_dim, head_dim, seed + 1, per_head=True)
    classifier = _Classifier(family, vision, rot1, rot2, shapes)
    if rot1 and (classifier.embed not in shapes or classifier.final_norm not in shapes):
        missing = [repr(n) for n in (classifier.embed, classifier.final_norm) if n not in shapes]
        raise RotationError(f"R1 needs the embedding and the final norm; the checkpoint lacks {' and '.join(missing)}")
    actions: dict[str, Action] = {}
    for name in sorted(shapes):
        action = classifier.action(name)
        if action is None:
            raise RotationError(_unknown_tensor(name, model_type))
        _check_shape(name, shapes[name], action)
        if action.fold and action.fold not in shapes:
            raise RotationError(f"tensor {name!r} reads the norm {action.fold!r}, which the checkpoint lacks")
        actions[name] = action
    return RotationPlan(model_type, rot1, rot2, family.unit_offset, classifier.final_norm, actions, notes)


def _unknown_tensor(name: str, model_type: str) -> str:
    if name.startswith("mtp."):
        return (f"cannot rotate {model_type!r} with multi-token-prediction weights ({name!r}): the MTP head's "
                "final norm feeds the lm_head shared with model.norm, and one head cannot fold two norms; "
                "drop the mtp.* tensors first (the model then serves without MTP speculative decoding)")
    return (f"cannot rotate tensor {name!r} of model_type {model_type!r}: the rotation table does not say "
            "whether it reads or writes the residual stream")
