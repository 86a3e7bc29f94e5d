"""The selective layout: which linear layers of a policy are quantized, by module-name patterns.

A module is quantized when its name matches a `quantize` pattern and no `keep` pattern. Patterns are shell globs over
the dotted names of `policy.named_modules()` (`*` crosses dots). Every pattern must match something: a pattern that
matches nothing is a typo or a stale layout, and quietly quantizing less than configured would hide it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

# After QuantVLA: the backbone's language/fusion linear layers and the DiT's feed-forward layers are integer; the DiT
# attention projections, embeddings, norms, state/action encoders and decoders and the horizon gate stay float.
# The fusion's attention projections are not listed: nn.MultiheadAttention reads in_proj_weight / out_proj.weight
# directly instead of calling a linear module, so only its feed-forward layers can be swapped.
DEFAULT_QUANTIZE = ("backbone.text_proj", "backbone.fusion.layers.*.linear1", "backbone.fusion.layers.*.linear2",
                    "head.blocks.*.mlp.0", "head.blocks.*.mlp.2")
DEFAULT_KEEP = ("head.blocks.*.attn.*", "head.blocks.*.ada.*", "head.state_proj", "head.action_proj",
                "head.time_mlp.*", "head.final_ada.*", "head.out", "head.gate")


@dataclass
class Layout:
    quantize: tuple[str, ...] = DEFAULT_QUANTIZE
    keep: tuple[str, ...] = DEFAULT_KEEP

    def __post_init__(self) -> None:
        self.quantize, self.keep = tuple(self.quantize), tuple(self.keep)
        if not self.quantize:
            raise ValueError("layout.quantize must list at least one module-name pattern")

    def select(self, model: nn.Module) -> list[str]:
        """The names of the linear layers to quantize, in module order; raises naming any pattern that matches
        nothing (for `quantize`: no nn.Linear)."""
        modules = dict(model.named_modules())
        linear = [n for n, m in modules.items() if type(m) is nn.Linear]  # exactly Linear: not MHA's out_proj
        for key, patterns, pool in (("layout.quantize", self.quantize, linear), ("layout.keep", self.keep, modules)):
            for pattern in patterns:
                if not any(fnmatchcase(name, pattern) for name in pool):
                    what = "nn.Linear module" if key == "layout.quantize" else "module"
                    raise ValueError(f"{key}: pattern {pattern!r} matches no {what} of the policy "
                                     f"(e.g. {', '.join(linear[:4])}, ...)")
        kept = {n for n in modules if any(fnmatchcase(n, p) for p in self.keep)}
        # a kept container keeps everything inside it
        kept |= {n for n in modules if any(n.startswith(k + ".") for k in kept)}
        names = [n for n in linear if n not in kept and any(fnmatchcase(n, p) for p in self.quantize)]
        if not names:
            raise ValueError(f"layout: the keep patterns {list(self.keep)} exclude every layer the quantize "
                             f"patterns {list(self.quantize)} match")
        return names
