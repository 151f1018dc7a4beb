"""Variable-length attention through SDPA: packed batches without flash-attention.

A packed row holds many sequences; a block-diagonal mask over the whole row costs attention
over T² token pairs (a 2,304-token pack: 9× the pairs of 9 rows of 256). Here attention runs
sequence by sequence, Σ L², while the projections and MLPs, most of the FLOPs, run on the packed
tokens with no padding.
This is what flash-attention's variable-length kernel does on CUDA (one kernel there; here one
SDPA call per sequence, which on a GPU without flash-attn costs a launch each), and it takes the same
arguments: `cu_seq_lens_q` (cumulative sequence lengths) and `max_length_q`, which transformers
models pass from their forward's keyword arguments down to the attention function.

Prefix sharing (`prefix_segments`, mars.data.batch.PrefixSharedCollator): a pair is one
sequence prefix · chosen · rejected; prefix and chosen are one causal sequence, and the rejected
part attends to the prefix and causally to itself, never to the chosen part: for a decoder the
same numbers as the two sequences alone, with the prefix computed once.

Registered with transformers as `VARLEN_SDPA`; without those arguments (padded batches) it is
plain SDPA with SDPA's own masks.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

VARLEN_SDPA = "mars_varlen_sdpa"


def varlen_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, attention_mask, cu_seq_lens_q=None, is_causal=None,
                        prefix_segments=None, prefix_masks=None, packed_lengths=None, **kwargs):
    """[1, heads, T, d] packed query/key/value → [1, T, heads, d], attention within each sequence
    (flash-attention's other arguments, `max_length_q` and the `_k` twins, are not needed here).
    `packed_lengths` and `prefix_masks` (`rejected_masks`), made once per forward, spare every
    layer a device sync and a mask."""
    if prefix_segments is not None:
        return prefix_shared_forward(module, query, key, value, prefix_segments, prefix_masks, **kwargs)
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, is_causal=is_causal, **kwargs)
    # one SDPA call per sequence on views of the pack: exact Σ L² work, no padded copies
    # (1.6× faster than regrouping into padded rows, 6.5× than the block mask, 1 CPU thread);
    # split, not slicing: its backward is one concatenation, not a zero-filled pack per sequence
    lengths = packed_lengths if packed_lengths is not None else cu_seq_lens_q.diff().tolist()
    outputs = [sdpa_attention_forward(module, q, k, v, None, is_causal=is_causal, **kwargs)[0]
               for q, k, v in zip(*(x.split(lengths, dim=2) for x in (query, key, value)))]
    return torch.cat(outputs, dim=1), None


def rejected_masks(segments: list[tuple[int, int, int]], device) -> list[torch.Tensor]:
    """Per pair, what its rejected part sees: the whole prefix, then itself causally."""
    return [torch.ones(r, p + r, dtype=torch.bool, device=device).tril(diagonal=p)[None, None] for p, _, r in segments]


def prefix_shared_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          segments: list[tuple[int, int, int]], masks=None, **kwargs):
    """Attention of packed pairs (prefix p, chosen c, rejected r tokens each): prefix · chosen as
    one causal sequence, then the rejected part over the prefix's and its own keys."""
    masks = masks if masks is not None else rejected_masks(segments, query.device)
    lengths = [n for p, c, r in segments for n in (p + c, r)]
    halves = [x.split(lengths, dim=2) for x in (query, key, value)]
    outputs = []
    for g, (p, c, r) in enumerate(segments):
        (q_pc, q_r), (k_pc, k_r), (v_pc, v_r) = (parts[2 * g: 2 * g + 2] for parts in halves)
        outputs.append(sdpa_attention_forward(module, q_pc, k_pc, v_pc, None, **kwargs)[0])
        keys, values = torch.cat([k_pc[:, :, :p], k_r], dim=2), torch.cat([v_pc[:, :, :p], v_r], dim=2)
        outputs.append(sdpa_attention_forward(module, q_r, keys, values, masks[g], is_causal=False, **kwargs)[0])
    return torch.cat(outputs, dim=1), None


def _pair_layout(segments: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per token of a prefix-shared row: its pair, its part (0 prefix, 1 chosen, 2 rejected), its position."""
    part = torch.arange(3, device=segments.device).repeat(len(segments)).repeat_interleave(segments.reshape(-1))
    pair = torch.arange(len(segments), device=segments.device).repeat_interleave(segments.sum(1))
    return pair, part, position_ids[0]


def _may_attend(pair, part, pos, q, k):
    """Within the pair, causal by position, the chosen and rejected parts apart."""
    return (pair[q] == pair[k]) & (pos[k] <= pos[q]) & ((part[k] == 0) | (part[k] == part[q]))


def prefix_shared_mask(segments: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """[1, 1, T, T] "may attend" mask of packed pairs, for attention implementations without a
    variable-length path (eager)."""
    pair, part, pos = _pair_layout(segments, position_ids)
    t = torch.arange(len(pos), device=pos.device)
    return _may_attend(pair, part, pos, t[:, None], t[None, :])[None, None]


def prefix_shared_block_mask(segments: torch.Tensor, position_ids: torch.Tensor):
    """The same mask as FlexAttention's block mask (attn_implementation=flex_attention, GPUs):
    blocks outside every pair are skipped, not computed and masked."""
    from torch.nn.attention.flex_attention import create_block_mask

    pair, part, pos = _pair_layout(segments, position_ids)
    return create_block_mask(lambda b, h, q, k: _may_attend(pair, part, pos, q, k), None, None, len(pos), len(pos),
                             device=pos.device)


def _varlen_sdpa_mask(attention_mask=None, **kwargs):
    # packed batches carry no padding mask: the attention function confines each sequence itself
    return None if attention_mask is None else sdpa_mask(attention_mask=attention_mask, **kwargs)


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_forward)
AttentionMaskInterface.register(VARLEN_SDPA, _varlen_sdpa_mask)
