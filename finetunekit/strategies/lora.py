"""LoRA (Hu et al., ICLR 2022) as a strategy: low-rank adapters on the backbone's projections (HF peft).

``FineTuner(..., strategy=LoRA(rank=8, alpha=16))`` injects peft's LoRA layers at construction (peft's
custom-model path, ``inject_adapter_in_model``), before the layer groups enter the optimizer, so every
parameter is in the optimizer from ``compile()`` on and nothing is added mid-run. The backbone's own
weights stay frozen for the whole run; each adapter belongs to the layer group of the layer it adapts, so
``[LoRA(), GradualUnfreeze()]`` opens a group's adapters when the plan opens the group and
``[LoRA(), DiscriminativeLR(0.5)]`` scales their LR. The new head trains fully.

Default targets: the attention and MLP projections of timm ViTs (``attn.qkv``, ``attn.proj``,
``mlp.fc1``, ``mlp.fc2``; also Swin and other timm transformers that use those names) and of torchvision
ViTs (``nn.MultiheadAttention`` and the MLP's Linear layers); for other families every ``nn.Linear``
outside the head, or, when there is none (most CNNs), every non-grouped ``nn.Conv2d``.

What it means for the rest of the library (docs/large_backbones.md): ``ft.save`` writes the merged model
(``W + B A * alpha / rank``) under the plain model's parameter names, a folder that loads without peft;
``ft.save(path, adapters_only=True)`` writes the adapters and the head; L2-SP penalizes the merged change
``||B A * scale||^2`` (the pretrained value of the merged weight is ``W``); WiSE-FT interpolates the merged
change (``W + alpha * dW``) by scaling ``B`` alone.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from finetunekit.errors import CheckpointError, ConfigError, MissingDependencyError
from finetunekit.strategies.base import Plan, Strategy

if TYPE_CHECKING:
    from finetunekit.backbones.base import Backbone, LayerGroup

ADAPTER = "default"  # peft's adapter name; one adapter per model
VIT_SUFFIXES = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, nn.Embedding)
_BASE = re.compile(r"\.base_layer(?=\.)")


def _peft_lora() -> Any:
    try:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer
    except ImportError as e:
        raise MissingDependencyError(
            "LoRA() needs the optional dependency peft (HF's parameter-efficient fine-tuning library); "
            "install it with: pip install finetunekit[lora]"
        ) from e
    return LoraConfig, inject_adapter_in_model, LoraLayer


def is_adapter_param(name: str) -> bool:
    return ".lora_" in name or name.startswith("lora_")


def plain_name(name: str) -> str:
    """The parameter's name in the model without adapters (``qkv.base_layer.weight`` -> ``qkv.weight``)."""
    return _BASE.sub("", name)


def has_adapters(model: nn.Module) -> bool:
    return any(is_adapter_param(n) for n, _ in model.named_parameters())


def _in(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def default_targets(model: nn.Module, head_path: str) -> list[str]:
    """The modules LoRA adapts when ``targets`` is None (see the module docstring)."""
    modules = [(n, m) for n, m in model.named_modules() if n and not _in(n, head_path)]
    vit = [n for n, m in modules if isinstance(m, nn.Linear) and n.endswith(VIT_SUFFIXES)]
    if vit:
        return vit
    mha = [n for n, m in modules if isinstance(m, nn.MultiheadAttention)]
    linears = [n for n, m in modules if isinstance(m, nn.Linear) and not any(_in(n, a) for a in mha)]
    if mha or linears:
        return mha + linears
    return [n for n, m in modules if isinstance(m, nn.Conv2d) and m.groups == 1]


def resolve_targets(model: nn.Module, head_path: str, targets: Sequence[str] | None) -> list[str]:
    """Module names to adapt: the defaults, or the modules matching ``targets`` (names or shell-style
    patterns such as ``"blocks.*.attn.qkv"``) among the layer types peft adapts."""
    if targets is None:
        found = default_targets(model, head_path)
        if not found:
            raise ConfigError(
                f"LoRA() found no Linear, Conv2d or attention layer outside the head of "
                f"{type(model).__name__}; pass targets=[module names or patterns] (see model.named_modules())"
            )
        return found
    modules = {n: m for n, m in model.named_modules() if n}
    chosen: list[str] = []
    for pattern in targets:
        supported = [n for n, m in modules.items() if isinstance(m, _SUPPORTED)]
        hits = [n for n in supported if fnmatch.fnmatchcase(n, pattern)]
        in_head = [n for n in hits if _in(n, head_path)]
        if in_head:
            raise ConfigError(
                f"LoRA targets={list(targets)!r}: {pattern!r} matches the head {in_head[0]!r}, which trains "
                f"fully; target backbone layers only"
            )
        if not hits:
            close = supported[:6]
            raise ConfigError(
                f"LoRA targets={list(targets)!r}: {pattern!r} matches no Linear, Conv or attention module; "
                f"expected module names or patterns such as {close}"
            )
        chosen += [n for n in hits if n not in chosen]
    return chosen


def _regroup(model: nn.Module, groups: list[LayerGroup]) -> list[LayerGroup]:
    """The same groups under the adapted model's names; each adapter joins its layer's group."""
    from finetunekit.backbones.base import LayerGroup

    owner = {n: i for i, g in enumerate(groups) for n in g.param_names}
    by_module: dict[str, int] = {}
    for name, index in owner.items():
        parts = name.split(".")
        for k in range(1, len(parts)):
            by_module.setdefault(".".join(parts[:k]), index)
    out: list[list[str]] = [[] for _ in groups]
    for name, _ in model.named_parameters():
        if is_adapter_param(name):
            index = by_module[plain_name(name.split(".lora_")[0] + ".")[:-1]]
        else:
            index = owner[plain_name(name)]
        out[index].append(name)
    return [LayerGroup(g.name, names) for g, names in zip(groups, out, strict=True)]


class LoRA(Strategy):
    """Low-rank adapters (rank ``rank``, scale ``alpha / rank``) on ``targets``; only they and the head
    train. ``dropout`` applies to the adapters' input. Needs ``pip install finetunekit[lora]`` (peft)."""

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16,
        targets: Sequence[str] | None = None,
        dropout: float = 0.0,
        train_bn: bool = False,
    ):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"LoRA rank={rank!r} is invalid; expected an integer >= 1, e.g. 8")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ConfigError(f"LoRA alpha={alpha!r} is invalid; expected a float > 0, e.g. 16 (2 x rank)")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"LoRA dropout={dropout!r} is invalid; expected a float in [0, 1), e.g. 0.1")
        if isinstance(targets, str) or (targets is not None and not all(isinstance(t, str) for t in targets)):
            raise ConfigError(
                f"LoRA targets={targets!r} is invalid; expected None (defaults) or a list of module names "
                f"or patterns, e.g. ['blocks.*.attn.qkv']"
            )
        self.rank, self.alpha, self.dropout = rank, float(alpha), float(dropout)
        self.targets = None if targets is None else list(targets)
        self.train_bn = train_bn

    def plan(self, n_groups: int, epoch: int) -> Plan:
        return [1.0] * n_groups

    def prepare(self, backbone: Backbone) -> None:
        """Inject the adapters into ``backbone.model`` and rename its groups' parameters."""
        lora_config, inject, _ = _peft_lora()
        model = backbone.model
        if has_adapters(model):
            raise ConfigError(
                "LoRA(): the model already has LoRA adapters; give one LoRA() per strategy, on a model "
                "without peft layers"
            )
        names = resolve_targets(model, backbone.head_path, self.targets)
        config = lora_config(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=names
        )
        model = inject(config, model, adapter_name=ADAPTER)
        backbone.model = model
        old_names = {plain_name(n): n for n, _ in model.named_parameters() if not is_adapter_param(n)}
        backbone.groups = _regroup(model, backbone.groups)
        backbone.no_weight_decay = {old_names.get(n, n) for n in backbone.no_weight_decay}

    def trainable_params(self, model: nn.Module, groups: Sequence[LayerGroup]) -> set[str] | None:
        adapters = {n for n, _ in model.named_parameters() if is_adapter_param(n)}
        if not adapters:
            raise ConfigError(
                "LoRA(): this model has no LoRA adapters; LoRA adds them when the FineTuner is built "
                "(FineTuner(..., strategy=LoRA())), or call LoRA().prepare(backbone) before using it "
                "in your own loop"
            )
        return adapters | set(groups[-1].param_names)

    def config(self) -> dict[str, Any]:
        return {"name": "LoRA", "rank": self.rank, "alpha": self.alpha, "targets": self.targets,
                "dropout": self.dropout, "train_bn": self.train_bn}  # fmt: skip


def _lora_layers(model: nn.Module) -> list[tuple[str, Any]]:
    if not has_adapters(model):
        return []
    layer_type = _peft_lora()[2]
    return [(n, m) for n, m in model.named_modules() if isinstance(m, layer_type)]


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state with every adapter merged into its layer, under the plain model's names (what
    ``ft.save`` writes: a folder that ``timm.create_model`` / ``FineTuner.load`` read without peft).
    Merges a copy, so the training model keeps its adapters bit for bit."""
    if not has_adapters(model):
        return model.state_dict()
    merged = copy.deepcopy(model)
    for _, layer in _lora_layers(merged):
        if not layer.merged:
            layer.merge(adapter_names=[ADAPTER])
    return {plain_name(k): v for k, v in merged.state_dict().items() if not is_adapter_param(k)}


def adapter_state_dict(model: nn.Module, head_path: str) -> dict[str, torch.Tensor]:
    """The adapters' and the head's tensors, under the model's own names."""
    return {k: v for k, v in model.state_dict().items() if is_adapter_param(k) or _in(k, head_path)}


def delta_terms(model: nn.Module) -> list[tuple[Callable[[], torch.Tensor], list[nn.Parameter]]]:
    """Per adapted layer: a function giving its merged change ``dW`` (with gradient) and the adapter
    parameters it depends on. L2-SP penalizes ``||dW||^2``: the distance of the merged weight to the
    pretrained one, the quantity L2-SP is defined on."""
    out: list[tuple[Callable[[], torch.Tensor], list[nn.Parameter]]] = []
    for _, layer in _lora_layers(model):
        if ADAPTER not in layer.lora_A:
            continue
        params = [*layer.lora_A[ADAPTER].parameters(), *layer.lora_B[ADAPTER].parameters()]
        out.append((functools.partial(layer.get_delta_weight, ADAPTER), params))
    return out


State = dict[str, torch.Tensor]


def wise_start(pretrained: State, finetuned: State) -> State:
    """WiSE-FT's pretrained end for an adapted model: ``lora_A`` as fine-tuned and ``lora_B`` zero, so
    mixing at alpha gives ``W + alpha * dW`` exactly (``dW = B A * scale`` is linear in B)."""
    out = dict(pretrained)
    for k, v in finetuned.items():
        if ".lora_A." in k or ".lora_embedding_A." in k:
            out[k] = v
        elif ".lora_B." in k or ".lora_embedding_B." in k:
            out[k] = torch.zeros_like(v)
    return out


def state_to_save(
    model: nn.Module, head_path: str, adapters_only: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What ``ft.save`` writes: the merged model, or (``adapters_only``) the adapters and the head, with
    the config entry that marks such a folder."""
    if not adapters_only:
        return merged_state_dict(model), {}
    if not has_adapters(model):
        raise ConfigError(
            "save(adapters_only=True): this FineTuner has no LoRA adapters; build it with "
            "strategy=LoRA(...), or save the whole model with save(path)"
        )
    return adapter_state_dict(model, head_path), {"adapters_only": True}


def load_adapters(model: nn.Module, head_path: str, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy an ``adapters_only`` folder's tensors into ``model``, which must carry the same adapters."""
    expected = adapter_state_dict(model, head_path)
    missing, unknown = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unknown or wrong:
        raise CheckpointError(
            f"the adapters in {where!r} do not fit this model: missing {missing[:3]}, unknown "
            f"{unknown[:3]}, other shapes {wrong[:3]}; build the FineTuner with the backbone, num_classes "
            f"and LoRA(rank, targets) the adapters were trained with"
        )
    with torch.no_grad():
        current = model.state_dict()
        for k, v in state.items():
            current[k].copy_(v)
