"""Streaming video under a fixed visual-token budget: frames arrive one at a time, an answer is available at
any time, and the visual tokens held never exceed ``budget``.

Memory is hierarchical, in the spirit of streaming video LLMs that consolidate old memory (e.g. Flash-VStream,
Zhang et al., arXiv 2406.08085; VideoStreaming, Qian et al., arXiv 2405.16009): the ``recent`` newest frames
stay whole; when the budget is exceeded, the oldest whole frame outside that window is merged down to
``old`` of its tokens, and once every older frame is merged, the two adjacent old entries that cover the
fewest frames (the oldest first among equals) merge into one of the same size, so older memory covers
longer spans more coarsely. Merging is size-weighted bipartite matching
(:func:`tokenreduce.vlm.reduce.bipartite_merge_sized` on the shared core); every held token keeps the
original (t, h, w) M-RoPE position of the token it stands for, exactly as in the unreduced prompt
(``get_rope_index`` of the full layout), and the question continues where the unreduced model would.
With a budget that holds every token, an answer equals the unpatched model on the whole video.

One frame here is one temporal token group of the model (Qwen2-VL merges ``temporal_patch_size`` = 2 raw
frames into one). Supported: Qwen2-VL and Qwen2.5-VL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ...registry import check_range, is_int, is_real
from ..families import find_vlm
from ..reduce import bipartite_merge_sized


@dataclass
class Entry:
    """Held tokens for a span of frames: embeddings (n, C), how many tokens each stands for, and the index of
    the original token (frame * tokens per frame + place) whose position each keeps."""

    tokens: Tensor
    size: Tensor
    orig: Tensor
    frames: int = 1
    whole: bool = True


@dataclass
class VideoStream:
    """A streaming-video session on a Qwen2-VL / Qwen2.5-VL model (``model`` is the ``...ForConditionalGeneration``).

    ``budget``: most visual tokens held; ``recent``: newest frames kept whole; ``old``: share of a frame's
    tokens kept once it is merged; ``prompt``: token ids before the video (1-D); ``seconds_per_frame``:
    Qwen2.5-VL's ``second_per_grid_ts`` of the stream."""

    model: nn.Module
    budget: int
    recent: int = 2
    old: float = 0.25
    prompt: Tensor | None = None
    seconds_per_frame: float | None = None
    entries: list[Entry] = field(default_factory=list, init=False)
    frames: int = field(default=0, init=False)
    grid: tuple[int, int] | None = field(default=None, init=False)
    history: list[int] = field(default_factory=list, init=False)  # tokens held after each frame

    def __post_init__(self) -> None:
        if not is_int(self.budget) or self.budget < 1:
            raise ValueError(f"stream: budget must be an int >= 1 (visual tokens held), got {self.budget!r}")
        if not is_int(self.recent) or self.recent < 0:
            raise ValueError(f"stream: recent must be an int >= 0 (newest frames kept whole), got {self.recent!r}")
        if not is_real(self.old):
            raise ValueError(f"stream: old must be a real number, got {self.old!r}")
        check_range("stream", "old", self.old, 0.0, 1.0, low_open=True, hint=" (share of a frame kept once merged)")
        family = find_vlm(self.model)
        if family is None or family.video_token_id is None or family.name != "qwen2-vl":
            raise ValueError("stream: needs a Qwen2-VL or Qwen2.5-VL model (video tokens with M-RoPE positions)")
        self.family = family
        if self.prompt is None:
            self.prompt = torch.zeros(0, dtype=torch.long)

    # ---- frames in --------------------------------------------------------------------------------------
    @torch.no_grad()
    def add_frame(self, pixel_values: Tensor, grid_thw: tuple[int, int, int]) -> int:
        """Encode one frame's patches (``grid_thw`` = (1, H, W) in patches, as the processor gives them) with the
        model's vision tower and hold its tokens; returns the tokens held."""
        if grid_thw[0] != 1:
            raise ValueError(f"stream: one frame at a time (grid t = 1), got grid {tuple(grid_thw)}")
        outer = self.family.outer
        thw = torch.tensor([list(grid_thw)], device=pixel_values.device)
        feats = outer.get_video_features(pixel_values, thw).pooler_output[0]
        m = outer.config.vision_config.spatial_merge_size
        return self.add_features(feats, (grid_thw[1] // m, grid_thw[2] // m))

    @torch.no_grad()
    def add_features(self, tokens: Tensor, grid: tuple[int, int]) -> int:
        """Hold one encoded frame (rows * cols, C) of LLM-space tokens; returns the tokens held."""
        p = grid[0] * grid[1]
        if tokens.shape[0] != p:
            raise ValueError(f"stream: a {grid[0]}x{grid[1]} frame has {p} tokens, got {tokens.shape[0]}")
        if self.grid is None:
            least = self.recent * p + self._small(p)
            if self.budget < least:
                raise ValueError(
                    f"stream: budget must be >= recent * tokens per frame + old * tokens per frame = {least} for "
                    f"{p}-token frames (budget {self.budget}, recent {self.recent}, old {self.old})"
                )
            self.grid = grid
        elif grid != self.grid:
            raise ValueError(f"stream: every frame must have the grid {self.grid}, got {grid}")
        orig = self.frames * p + torch.arange(p, device=tokens.device)
        self.entries.append(Entry(tokens, torch.ones(p, device=tokens.device), orig))
        self.frames += 1
        while self.held > self.budget:
            self._compress(p)
        self.history.append(self.held)
        return self.held

    @property
    def held(self) -> int:
        """Visual tokens held now."""
        return sum(e.tokens.shape[0] for e in self.entries)

    def _small(self, p: int) -> int:
        return max(1, round(self.old * p))

    def _compress(self, p: int) -> None:
        """One step down: merge the oldest whole frame outside the recent window, else the adjacent pair of old
        entries covering the fewest frames."""
        older = len(self.entries) - self.recent
        small = self._small(p)
        whole = [i for i in range(older) if self.entries[i].whole]
        if whole:
            self.entries[whole[0]] = _merge([self.entries[whole[0]]], small)
            return
        if older < 2:
            raise RuntimeError("stream: nothing left to merge under the budget")  # prevented by the check above
        i = min(range(older - 1), key=lambda j: (self.entries[j].frames + self.entries[j + 1].frames, j))
        self.entries[i : i + 2] = [_merge(self.entries[i : i + 2], small)]

    # ---- answers ----------------------------------------------------------------------------------------
    def _layout(self, question: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The held prompt's embeddings (1, L, C), its M-RoPE positions (3, 1, L) taken from ``get_rope_index``
        of the unreduced prompt, and the position the next token takes."""
        if not self.entries:
            raise ValueError("stream: no frame yet")
        cfg, outer = self.family.outer.config, self.family.outer
        device = self.entries[0].tokens.device
        prompt, question = self.prompt.to(device), question.to(device).reshape(-1)
        p = self.grid[0] * self.grid[1]
        start = torch.tensor([cfg.vision_start_token_id], device=device)
        end = torch.tensor([cfg.vision_end_token_id], device=device)
        video = torch.full((self.frames * p,), cfg.video_token_id, device=device)
        ids = torch.cat([prompt, start, video, end, question])[None]
        types = 2 * (ids == cfg.video_token_id).long()
        m = cfg.vision_config.spatial_merge_size
        kw = {"video_grid_thw": torch.tensor([[self.frames, self.grid[0] * m, self.grid[1] * m]], device=device)}
        if self.seconds_per_frame is not None:
            kw["second_per_grid_ts"] = torch.tensor([self.seconds_per_frame], device=device)
        pos, _delta = outer.get_rope_index(ids, types, **kw)
        orig = torch.cat([e.orig for e in self.entries])
        order = torch.argsort(orig)
        first = len(prompt) + 1
        n = ids.shape[1]
        cols = torch.cat([torch.arange(first, device=device), first + orig[order],
                          torch.arange(first + self.frames * p, n, device=device)])
        emb_text = outer.get_input_embeddings()
        vis = torch.cat([e.tokens for e in self.entries])[order]
        after = emb_text(ids[0, first + len(video) :])
        emb = torch.cat([emb_text(ids[0, :first]), vis.to(emb_text.weight.dtype), after])
        return emb[None], pos[..., cols], pos.max() + 1

    @torch.no_grad()
    def logits(self, question: Tensor) -> Tensor:
        """Next-token logits (vocab,) after the held video and ``question`` (1-D token ids)."""
        emb, pos, _next = self._layout(question)
        out = self.family.lm(inputs_embeds=emb, position_ids=pos)
        return self._head(out.last_hidden_state[:, -1])[0]

    @torch.no_grad()
    def answer(self, question: Tensor, max_new_tokens: int = 16) -> list[int]:
        """Greedy answer to ``question`` (1-D ids) from the tokens held now; positions continue after the
        unreduced prompt's last one."""
        emb, pos, nxt_pos = self._layout(question)
        out = self.family.lm(inputs_embeds=emb, position_ids=pos, use_cache=True)
        cache, toks = out.cache, []
        emb_text = self.family.outer.get_input_embeddings()
        for step in range(max_new_tokens):
            tok = self._head(out.last_hidden_state[:, -1]).argmax(-1)
            toks.append(int(tok))
            if step + 1 == max_new_tokens:
                break
            p = (nxt_pos + step).view(1, 1, 1).expand(3, 1, 1)
            out = self.family.lm(inputs_embeds=emb_text(tok[:, None]), position_ids=p, cache=cache, use_cache=True)
            cache = out.cache
        return toks

    def _head(self, h: Tensor) -> Tensor:
        return self.model.lm_head(h) if hasattr(self.model, "lm_head") else h


def _merge(entries: list[Entry], k: int) -> Entry:
    """Entries (adjacent in time) -> one entry of at most ``k`` tokens by size-weighted bipartite merging."""
    tokens = torch.cat([e.tokens for e in entries])
    size = torch.cat([e.size for e in entries])
    orig = torch.cat([e.orig for e in entries])
    frames = sum(e.frames for e in entries)
    if tokens.shape[0] <= k:
        return Entry(tokens, size, orig, frames, False)
    idx, out, size = bipartite_merge_sized(tokens[None], size[None], k)
    return Entry(out[0], size[0], orig[idx[0]], frames, False)
