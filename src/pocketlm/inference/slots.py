"""A Llama forward over many sequences at once, each in its own slot of one KV cache: the arithmetic of
continuous batching (inference/batching.py decides who runs when).

Same weights and arithmetic as the batch-1 fast path (inference/fastpath.py: fused q/k/v and gate/up,
rotary tables from the model's own `rotary_emb`, sdpa with grouped-query attention), with:
- a KV cache per layer of shape (slots, kv_heads, capacity, head_dim). The capacity grows by doubling when a
  sequence needs more room (up to `max_len`) and `reset()` gives the memory back, so memory follows what is
  in flight instead of slots x context;
- `prefill(slot, ids, start)`: a chunk of one sequence's prompt, causal within the chunk;
- `step(tokens, positions, segments)`: both in one forward, a decode token for the sequences in slots
  0..n-1 and prompt chunks of other sequences: the weights are read once for all of them, so feeding a prompt
  while others decode costs little more than their decode step;
- `decode(tokens)`: one new token for each of the sequences in slots 0..n-1 (the scheduler keeps the running
  sequences in the first slots, `move` compacts them), each at its own position, with a mask that hides
  the rest of the cache.
Logits are float32, (n, vocab). Supported models: those `fastpath.unsupported_reason` accepts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pocketlm.inference.fastpath import (
    _ENABLE_GQA,
    _fused_weights,
    _linear,
    _matrix,
    _norm,
    take_shape_and_tables,
    unsupported_reason,
)


class SlotDecoder:
    def __init__(self, model, slots: int, max_len: int, initial: int = 256):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"batched decoding needs a plain Llama model: {reason}")
        hf_layers = take_shape_and_tables(self, model, max_len)
        self.weights = [(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon, qkv,
                         _matrix(layer.self_attn.o_proj.weight), layer.post_attention_layernorm.weight,
                         layer.post_attention_layernorm.variance_epsilon, gate_up, _matrix(layer.mlp.down_proj.weight))
                        for layer, (qkv, gate_up) in zip(hf_layers, _fused_weights(model, hf_layers), strict=True)]
        self.gqa = {"enable_gqa": True} if self.kv_heads != self.heads and _ENABLE_GQA else {}
        self.slots, self.max_len, self.initial = slots, max_len, min(initial, max_len)
        self.capacity = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.reset()

    def reset(self) -> None:
        """Give back the cache memory beyond the initial capacity (call when no sequence is in flight)."""
        if self.capacity != self.initial:
            shape = (self.slots, self.kv_heads, self.initial, self.head_dim)
            self.k = [self.embed.new_zeros(shape) for _ in self.weights]
            self.v = [self.embed.new_zeros(shape) for _ in self.weights]
            self.capacity = self.initial

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def ensure(self, length: int) -> None:
        """Room for `length` positions in every slot (doubling, at most max_len)."""
        if length <= self.capacity:
            return
        if length > self.max_len:
            raise ValueError(f"{length} positions do not fit in the context window of {self.max_len}")
        new = min(self.max_len, max(length, 2 * self.capacity))
        shape = (self.slots, self.kv_heads, new, self.head_dim)
        for cache in (self.k, self.v):
            for i, old in enumerate(cache):
                grown = old.new_zeros(shape)
                grown[:, :, : self.capacity] = old
                cache[i] = grown
        self.capacity = new

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cached positions of slot `src` into slot `dst`."""
        for cache in (self.k, self.v):
            for t in cache:
                t[dst, :, :length] = t[src, :, :length]

    def _layers(self, h, rows, n, cos, sin, write, attend):
        nh, nqk, half = self.heads, self.heads + self.kv_heads, self.head_dim // 2
        for (ln1, eps1, qkv_w, o, ln2, eps2, gate_up, down), kc, vc in zip(self.weights, self.k, self.v,
                                                                            strict=True):
            qkv = _linear(_norm(h, ln1, eps1), qkv_w).view(rows, n, -1, self.head_dim)
            qk = qkv[:, :, :nqk]
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin
            write(kc, qk[:, :, nh:])
            write(vc, qkv[:, :, nqk:])
            att = attend(qk[:, :, :nh].transpose(1, 2), kc, vc)
            h = h + _linear(att.transpose(1, 2).reshape(rows, n, -1), o)
            gate, up = _linear(_norm(h, ln2, eps2), gate_up).chunk(2, dim=-1)
            h = h + _linear(F.silu(gate) * up, down)
        return F.linear(_norm(h[:, -1], self.norm, self.eps), self.lm_head).float()

    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int], start: int) -> torch.Tensor:
        """Positions start..start+len(ids)-1 of the sequence in `slot`; the last position's logits (1, vocab)."""
        n = len(ids)
        end = start + n
        self.ensure(end)
        x = torch.tensor([ids], dtype=torch.long, device=self.embed.device)
        mask = None
        if start:  # a later chunk sees the cached prefix and itself up to each position
            mask = torch.ones(n, end, dtype=torch.bool, device=x.device).tril(diagonal=start)

        def write(cache, t):
            cache[slot, :, start:end] = t[0].transpose(0, 1)

        def attend(q, kc, vc):
            return F.scaled_dot_product_attention(q, kc[slot:slot + 1, :, :end], vc[slot:slot + 1, :, :end],
                                                  attn_mask=mask, is_causal=mask is None and n > 1,
                                                  scale=self.scale, **self.gqa)

        return self._layers(F.embedding(x, self.embed), 1, n, self.cos[start:end], self.sin[start:end],
                            write, attend)

    @torch.inference_mode()
    def decode(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One token for each sequence in slots 0..len(tokens)-1, at its own position; logits (n, vocab)."""
        rows = len(tokens)
        end = max(positions) + 1
        self.ensure(end)
        device = self.embed.device
        x = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
        pos = torch.tensor(positions, dtype=torch.long, device=device)
        rows_idx = torch.arange(rows, device=device)
        # one sequence sees every cached position: no mask, and a plain slice write (the batch-1 fast path's cost)
        mask = None if rows == 1 else (torch.arange(end, device=device)[None] <= pos[:, None])[:, None, None]

        def write(cache, t):
            if rows == 1:
                cache[0, :, end - 1] = t[0, 0]
            else:
                cache[rows_idx, :, pos] = t[:, 0]

        def attend(q, kc, vc):
            return F.scaled_dot_product_attention(q, kc[:rows, :, :end], vc[:rows, :, :end], attn_mask=mask,
                                                  scale=self.scale, **self.gqa)

        return self._layers(F.embedding(x, self.embed), rows, 1, self.cos[pos][:, None], self.sin[pos][:, None],
                            write, attend)

    @torch.inference_mode()
    def step(self, tokens: list[int], positions: list[int],
             segments: list[tuple[int, list[int], int]] = ()) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One forward for a decode token of each sequence in slots 0..len(tokens)-1 and prompt chunks
        `segments` [(slot, ids, start)] of other sequences: the weights are read once for all of them, so a
        prompt fed while others decode costs little more than the decode step alone. Returns (decode logits
        (len(tokens), vocab) or None, each segment's last-position logits (len(segments), vocab) or None)."""
        if not segments:
            return self.decode(tokens, positions), None
        if not tokens and len(segments) == 1:
            slot, ids, start = segments[0]
            return None, self.prefill(slot, ids, start)
        rows, device = len(tokens), self.embed.device
        spans = [(slot, len(ids), start) for slot, ids, start in segments]
        self.ensure(max([p + 1 for p in positions] + [start + n for _, n, start in spans]))
        pos = torch.tensor(positions + [p for _, n, start in spans for p in range(start, start + n)],
                           dtype=torch.long, device=device)
        x = torch.tensor(tokens + [t for _, ids, _ in segments for t in ids], dtype=torch.long, device=device)
        nh, nqk, half, hd = self.heads, self.heads + self.kv_heads, self.head_dim // 2, self.head_dim
        cos, sin = self.cos[pos], self.sin[pos]  # (T, 1, head_dim)
        dec_pos, rows_idx = pos[:rows], torch.arange(rows, device=device)
        dec_end = max(positions) + 1 if rows else 0
        dec_mask = None if rows <= 1 else (torch.arange(dec_end, device=device)[None] <= dec_pos[:, None])[:, None, None]
        seg_masks = [None if not start else torch.ones(n, start + n, dtype=torch.bool, device=device).tril(start)
                     for _, n, start in spans]
        h = F.embedding(x, self.embed)  # (T, hidden)
        for (ln1, eps1, qkv_w, o, ln2, eps2, gate_up, down), kc, vc in zip(self.weights, self.k, self.v,
                                                                            strict=True):
            qkv = _linear(_norm(h, ln1, eps1), qkv_w).view(len(x), -1, hd)
            qk = qkv[:, :nqk]
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin
            q, k, v = qk[:, :nh], qk[:, nh:], qkv[:, nqk:]
            parts = []
            if rows:
                if rows == 1:
                    kc[0, :, dec_end - 1], vc[0, :, dec_end - 1] = k[0], v[0]
                else:
                    kc[rows_idx, :, dec_pos], vc[rows_idx, :, dec_pos] = k[:rows], v[:rows]
                att = F.scaled_dot_product_attention(q[:rows, :, None], kc[:rows, :, :dec_end], vc[:rows, :, :dec_end],
                                                     attn_mask=dec_mask, scale=self.scale, **self.gqa)
                parts.append(att.reshape(rows, -1))
            at = rows
            for (slot, n, start), mask in zip(spans, seg_masks, strict=True):
                end = start + n
                kc[slot, :, start:end], vc[slot, :, start:end] = k[at:at + n].transpose(0, 1), v[at:at + n].transpose(0, 1)
                att = F.scaled_dot_product_attention(q[at:at + n].transpose(0, 1)[None], kc[slot:slot + 1, :, :end],
                                                     vc[slot:slot + 1, :, :end], attn_mask=mask,
                                                     is_causal=mask is None and n > 1, scale=self.scale, **self.gqa)
                parts.append(att[0].transpose(0, 1).reshape(n, -1))
                at += n
            h = h + F.linear(torch.cat(parts), o)
            gate, up = _linear(_norm(h, ln2, eps2), gate_up).chunk(2, dim=-1)
            h = h + _linear(F.silu(gate) * up, down)
        ends = torch.tensor([rows + sum(n for _, n, _ in spans[:i + 1]) - 1 for i in range(len(spans))],
                            dtype=torch.long, device=device)
        last = torch.cat([rows_idx, ends])
        logits = F.linear(_norm(h[last], self.norm, self.eps), self.lm_head).float()
        return (logits[:rows] if rows else None), logits[rows:]
