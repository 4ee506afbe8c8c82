"""DHEN backbone of the user and Pin towers (Zhang et al. 2022, "DHEN: A Deep and Hierarchical Ensemble Network
for Large-Scale CTR Prediction"; used by the DERM paper, section 3 and appendix A).

Our reading of DHEN. No single feature-interaction module (dot products, self-attention, DCN, MaskNet, MLP)
wins on every dataset, and stacking one kind deeper saturates early. DHEN therefore builds each layer as an
*ensemble* of heterogeneous interaction modules that all read the same layer input, and stacks such layers so
that higher layers model interactions of the lower layers' interactions (the "hierarchy"). Layer n maps the
tokens X_n (B, T, C) to

    X_{n+1} = Norm( Ensemble(Module_1(X_n), ..., Module_k(X_n)) + ShortCut(X_n) )

where every module returns T tokens of width C, Ensemble concatenates the module outputs and projects them back
(the paper also allows a sum), ShortCut is the identity when the widths match, and Norm is LayerNorm. The
residual keeps the stack trainable when deep and lets a layer default to "no new interaction".

How it maps here. The DERM paper's towers use "a multi-layer DHEN backbone ... with each layer consisting of two
feature interaction modules chosen from MaskNet, Transformer and MLP". So:

* the tokens are the tower's feature tokens: one per id / categorical field, one for all numerics, one per
  dense vector and, in the user tower, one for the activity sequence (`towers.model.FieldEncoder`);
* each `DhenLayer` runs the two modules named by `TowerConfig.dhen_modules` on the same input, concatenates their
  outputs along C (B, T, 2C), projects token-wise back to C, adds the input and applies LayerNorm over C;
* `MaskNetModule` is MaskNet's MaskBlock on feature embeddings (Wang et al. 2021): an instance-guided mask, a
  two-layer MLP of the whole flattened instance, multiplies the layer-normalised tokens element-wise (so what is
  kept of a token depends on the other tokens of the same instance), then a token-wise linear map, LayerNorm
  and ReLU;
* `TransformerModule` is one post-norm Transformer encoder layer over the T tokens (self-attention across
  fields, then a token-wise feed-forward), no dropout;
* `MlpModule` flattens the tokens, applies a one-hidden-layer ReLU MLP and reshapes back to (B, T, C);
* after the layers, a learned linear mix over the token axis turns the T_in input tokens into the T_out output
  tokens (`TokenMix`): output token o = sum_t W[o, t] * token t + b[o]. We chose it over attention pooling with
  T_out learned queries because it is instance-independent, cheap and lets every field contribute to every
  output token; the instance-dependent mixing already happened inside the DHEN layers. The tower then
  flattens the T_out tokens and L2-normalises (appendix A: Norm(Concat(token_1, ..., token_n))).
"""

from __future__ import annotations

import torch
from torch import nn

from towers.config import DhenModule, TowerConfig


class MaskNetModule(nn.Module):
    """MaskBlock with an instance-guided mask: (B, T, C) -> (B, T, C).

    mask = W2 relu(W1 vec(X) + b1) + b2 (B, T*C), reshaped to (B, T, C); out = relu(LN((mask * LN(X)) W)), with
    W (C, C) applied token-wise. MaskNet's W maps the whole flattened vector; token-wise keeps the output T tokens
    and costs C^2 instead of (T C)^2 per instance, and the cross-token interaction is already in the mask.
    """

    def __init__(self, t: int, c: int, hidden: int) -> None:
        super().__init__()
        self.t, self.c = t, c
        self.mask = nn.Sequential(nn.Linear(t * c, hidden), nn.ReLU(), nn.Linear(hidden, t * c))
        self.ln_in = nn.LayerNorm(c)
        self.proj = nn.Linear(c, c)
        self.ln_out = nn.LayerNorm(c)

    def instance_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The mask (B, T, C) of each instance, computed from that instance's tokens."""
        return self.mask(x.flatten(1)).view(-1, self.t, self.c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masked = self.instance_mask(x) * self.ln_in(x)  # (B, T, C)
        return torch.relu(self.ln_out(self.proj(masked)))


class TransformerModule(nn.Module):
    """One Transformer encoder layer (self-attention over the T tokens + feed-forward): (B, T, C) -> (B, T, C)."""

    def __init__(self, c: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            d_model=c, nhead=heads, dim_feedforward=hidden, dropout=0.0, batch_first=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class MlpModule(nn.Module):
    """Flatten, one hidden ReLU layer, reshape: (B, T, C) -> (B, T, C)."""

    def __init__(self, t: int, c: int, hidden: int) -> None:
        super().__init__()
        self.t, self.c = t, c
        self.net = nn.Sequential(nn.Linear(t * c, hidden), nn.ReLU(), nn.Linear(hidden, t * c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).view(-1, self.t, self.c)


def make_module(kind: DhenModule, t: int, c: int, cfg: TowerConfig) -> nn.Module:
    if kind is DhenModule.MASKNET:
        return MaskNetModule(t, c, cfg.dhen_hidden)
    if kind is DhenModule.TRANSFORMER:
        return TransformerModule(c, cfg.dhen_heads, cfg.dhen_hidden)
    return MlpModule(t, c, cfg.dhen_hidden)


class DhenLayer(nn.Module):
    """X (B, T, C) -> LayerNorm(proj(concat_C(M_1(X), ..., M_k(X))) + X), (B, T, C)."""

    def __init__(self, t: int, c: int, cfg: TowerConfig) -> None:
        super().__init__()
        self.branches = nn.ModuleList(make_module(k, t, c, cfg) for k in cfg.dhen_modules)
        self.combine = nn.Linear(len(self.branches) * c, c)
        self.norm = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ensemble = self.combine(torch.cat([m(x) for m in self.branches], dim=-1))
        return self.norm(ensemble + x)


class TokenMix(nn.Module):
    """Learned linear mix over the token axis: (B, T_in, C) -> (B, T_out, C)."""

    def __init__(self, t_in: int, t_out: int) -> None:
        super().__init__()
        self.mix = nn.Linear(t_in, t_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x.transpose(1, 2)).transpose(1, 2)


class DhenBackbone(nn.Module):
    """`dhen_layers` DHEN layers over T_in tokens, then the token mix to T_out = dim / C tokens, flattened:
    (B, T_in, C) -> (B, dim). The caller L2-normalises."""

    def __init__(self, t_in: int, cfg: TowerConfig) -> None:
        super().__init__()
        c = cfg.token_dim
        self.layers = nn.Sequential(*(DhenLayer(t_in, c, cfg) for _ in range(cfg.dhen_layers)))
        self.to_output = TokenMix(t_in, cfg.dim // c)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.to_output(self.layers(tokens)).flatten(1)
