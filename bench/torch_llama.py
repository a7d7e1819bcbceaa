"""A straightforward PyTorch (eager) version of dept_jax's model and training step, the baseline
of bench/step_speed.py: same Llama body (RMSNorm, RoPE rotate-half, SwiGLU, causal SDPA), tied
embeddings, padded-vocab mask, AdamW without the lr inside (betas 0.9/0.95, eps 1e-8, no weight
decay) and global-norm clipping at 1.0, the way an engineer would write it with torch.nn."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
  def __init__(self, d, eps):
    super().__init__()
    self.scale = nn.Parameter(torch.ones(d))
    self.eps = eps

  def forward(self, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def rope(seq, hd, theta):
  inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
  f = torch.arange(seq, dtype=torch.float32)[:, None] * inv[None, :]
  f = torch.cat([f, f], -1)
  return f.cos(), f.sin()


def apply_rope(x, cos, sin):  # x [B, H, L, hd]
  h = x.shape[-1] // 2
  rot = torch.cat([-x[..., h:], x[..., :h]], -1)
  return x * cos + rot * sin


class Block(nn.Module):
  def __init__(self, d, h, ff, eps, std, out_std):
    super().__init__()
    self.h = h
    self.attn_norm, self.mlp_norm = RMSNorm(d, eps), RMSNorm(d, eps)
    self.wq, self.wk, self.wv = (nn.Linear(d, d, bias=False) for _ in range(3))
    self.wo = nn.Linear(d, d, bias=False)
    self.w_gate, self.w_up = nn.Linear(d, ff, bias=False), nn.Linear(d, ff, bias=False)
    self.w_down = nn.Linear(ff, d, bias=False)
    for m in (self.wq, self.wk, self.wv, self.w_gate, self.w_up):
      nn.init.trunc_normal_(m.weight, std=std, a=-3 * std, b=3 * std)
    for m in (self.wo, self.w_down):
      nn.init.trunc_normal_(m.weight, std=out_std, a=-3 * out_std, b=3 * out_std)

  def forward(self, x, cos, sin):
    B, L, D = x.shape
    hd = D // self.h
    y = self.attn_norm(x)
    q, k, v = (w(y).view(B, L, self.h, hd).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.wo(o.transpose(1, 2).reshape(B, L, D))
    y = self.mlp_norm(x)
    return x + self.w_down(F.silu(self.w_gate(y)) * self.w_up(y))


class Llama(nn.Module):
  def __init__(self, cfg, vocab_rows, vocab_size, seq_len):
    super().__init__()
    d, std = cfg.d_model, cfg.init_std
    out_std = std / math.sqrt(2 * cfg.n_layers)
    self.embed = nn.Parameter(torch.empty(vocab_rows, d))
    nn.init.trunc_normal_(self.embed, std=std, a=-3 * std, b=3 * std)
    self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.d_ff, cfg.norm_eps, std, out_std)
                                for _ in range(cfg.n_layers))
    self.final_norm = RMSNorm(d, cfg.norm_eps)
    cos, sin = rope(seq_len, d // cfg.n_heads, cfg.rope_theta)
    self.register_buffer("cos", cos, persistent=False)
    self.register_buffer("sin", sin, persistent=False)
    self.register_buffer("pad", torch.arange(vocab_rows) >= vocab_size, persistent=False)

  def forward(self, tokens):
    x = self.embed[tokens]
    for b in self.blocks:
      x = b(x, self.cos, self.sin)
    logits = self.final_norm(x) @ self.embed.T
    return logits.masked_fill(self.pad, -1e30)


def make_step(cfg, vocab_rows, vocab_size, seq_len, lr=1e-3):
  torch.manual_seed(0)
  net = Llama(cfg, vocab_rows, vocab_size, seq_len)
  opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)

  def step(inputs, targets):
    logits = net(inputs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    return loss
  return net, step
