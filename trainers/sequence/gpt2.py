"""GPT-2 as a plain PyTorch module (nanoGPT-style), initialised from a Hugging Face `GPT2Model`.

Why our own module rather than `transformers.GPT2Model`:
- LaMo adapts each of the query, key and value projections with its own rank-16 LoRA (loralib's
  MergedLinear over GPT-2's fused `c_attn`): 12 × (36,864 + 36,864 + 2,304) trainable parameters on GPT-2
  small. Splitting `c_attn` into three Linear layers (`c_attn.q/k/v`) lets peft express exactly that.
- Positional embeddings are the caller's: LaMo's D4RL model adds none, to trajectory tokens or to its language
  batches; its Atari model adds `wpe` to both (trainers/sequence/model.py, `language_loss`).
- The evaluation hot path needs only the last state token's output, which a plain module can ask for.
Weights, layer norms, scaling and the MLP activation the config names are GPT-2's, so outputs equal
`GPT2Model`'s with zero position embeddings (tested for each activation in `ACTIVATIONS`). A config naming
an activation or option this module does not implement is refused (`check_supported`), never approximated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

# transformers is imported where a GPT-2 is built (~3 s): the sweep driver and every non-GPT trial load this
# module without it.
if TYPE_CHECKING:
    from transformers import GPT2Config, GPT2Model


class QKVProjection(nn.Module):
    """GPT-2's `c_attn` as three Linear layers, so each can carry its own LoRA adapter."""

    def __init__(self, width: int):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q(x), self.k(x), self.v(x)


class SelfAttention(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = QKVProjection(config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, last_query_only: bool = False) -> torch.Tensor:
        batch, length, width = x.shape
        if last_query_only:
            q, k, v = self.c_attn.q(x[:, -1:]), self.c_attn.k(x), self.c_attn.v(x)
        else:
            q, k, v = self.c_attn(x)
        heads = lambda t: t.view(batch, -1, self.n_head, width // self.n_head).transpose(1, 2)  # noqa: E731
        q, k, v = heads(q), heads(k), heads(v)
        dropout = self.attn_dropout if self.training else 0.0
        if last_query_only:  # one query at the end may see every key: no causal mask needed
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, :, -1:],
                                               dropout_p=dropout)
        elif mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(batch, -1, width)
        return self.resid_dropout(self.c_proj(y))


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# The MLP activations of Hugging Face's ACT2FN implemented here, by the name a GPT2Config gives.
ACTIVATIONS = {
    # GPT-2's own gelu_new is the tanh approximation; PyTorch computes it in one fused kernel (CPU speed), and
    # HF's gelu_pytorch_tanh is that kernel by name.
    "gelu_new": _tanh_gelu,
    "gelu_pytorch_tanh": _tanh_gelu,
    "gelu": F.gelu,  # exact (erf)
    "relu": F.relu,  # Decision Transformer's gym experiment and LaMo's experiment.py default
}


class MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner)
        self.c_proj = nn.Linear(inner, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)
        self.activation = ACTIVATIONS[config.activation_function]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, last_query_only: bool = False) -> torch.Tensor:
        attended = self.attn(self.ln_1(x), mask, last_query_only)
        x = (x[:, -1:] if last_query_only else x) + attended
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """GPT-2 whose forward takes embeddings: trajectory tokens, or text through `language_loss`. Positional
    embeddings are added by the caller (trainers/sequence/model.py) where the reference model adds them."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        check_supported(config)
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # added by the caller where its source adds it
        self.wpe.weight.requires_grad_(False)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    @classmethod
    def from_hf(cls, hf: GPT2Model) -> GPT2:
        """Copy a Hugging Face GPT2Model's weights (HF's Conv1D stores weights as (in, out))."""
        model = cls(hf.config)
        width = hf.config.n_embd
        state = {}
        for name, tensor in hf.state_dict().items():
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # causal-mask buffers of older checkpoints
            if ".attn.c_attn." in name:
                prefix, kind = name.rsplit(".c_attn.", 1)
                parts = tensor.split(width, dim=-1)
                for part, letter in zip(parts, "qkv"):
                    state[f"{prefix}.c_attn.{letter}.{kind}"] = part.t() if kind == "weight" else part
            elif name.endswith(("c_proj.weight", "c_fc.weight")):
                state[name] = tensor.t()
            else:
                state[name] = tensor
        model.load_state_dict(state)
        return model

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                last_query_only: bool = False) -> torch.Tensor:
        """(B, T, width) → (B, T, width) final hidden states ((B, 1, width) with last_query_only).

        attention_mask: (B, T) bool, False on (left) padding; None when nothing is padded.
        """
        x = self.drop(inputs_embeds)
        mask = None if attention_mask is None else _causal_padding_mask(attention_mask)
        for i, block in enumerate(self.h):
            x = block(x, mask, last_query_only=last_query_only and i == len(self.h) - 1)
        return self.ln_f(x)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.wte.weight)  # GPT-2 ties the LM head to the token embeddings

    def language_loss(self, tokens: torch.Tensor, positional_embeddings: bool = False) -> torch.Tensor:
        """Causal LM cross-entropy on (B, T+1) token windows; with `positional_embeddings`, wpe added as Hugging
        Face's GPT2LMHeadModel does (LaMo's Atari co-training), else none (LaMo's D4RL code)."""
        inputs = self.wte(tokens[:, :-1])
        if positional_embeddings:
            inputs = inputs + self.wpe(torch.arange(inputs.shape[1], device=inputs.device))
        hidden = self.forward(inputs)
        logits = self.lm_logits(hidden)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))


def _causal_padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) key validity → (B, 1, T, T) bool: causal, padded keys hidden. Each query also sees itself,
    so padded rows are never fully masked (their outputs are ignored, but must not be NaN)."""
    length = valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | eye)[:, None]


def gpt2_config(n_layer: int, n_embd: int, n_head: int, dropout: float, vocab_size: int = 1,
                n_positions: int = 1024, activation_function: str = "gelu_pytorch_tanh") -> GPT2Config:
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                      n_head=n_head, n_inner=4 * n_embd, resid_pdrop=dropout, embd_pdrop=dropout,
                      attn_pdrop=dropout, activation_function=activation_function,
                      bos_token_id=None, eos_token_id=None)


def random_gpt2(config: GPT2Config) -> GPT2:
    """A freshly initialised GPT-2 with Hugging Face's initialisation (N(0, 0.02), scaled residual proj)."""
    from transformers import GPT2Model

    return GPT2.from_hf(GPT2Model(config))


def check_supported(config: GPT2Config) -> None:
    """Refuse GPT-2 options this module does not implement, instead of silently computing something else."""
    if config.n_embd % config.n_head:
        raise ValueError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
    if config.activation_function not in ACTIVATIONS:
        raise ValueError(f"activation_function={config.activation_function!r} is not implemented here; supported: "
                         f"{', '.join(sorted(ACTIVATIONS))}")
    unsupported = [name for name in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn")
                   if getattr(config, name, False)]
    if unsupported or not getattr(config, "scale_attn_weights", True):
        raise ValueError(f"GPT-2 option(s) not supported: {unsupported or ['scale_attn_weights=False']}")
