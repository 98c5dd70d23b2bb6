"""Causal-LM token statistics for prompt compression: surprisal of every context token, and the
likelihood of the question given each document. Pure functions of (model, tokenizer, text, windows).

Windows are scored independently (each starts with the tokenizer's BOS, or EOS when there is no BOS),
batched with right padding; logits are reduced to log-probabilities one small sub-batch at a time so
memory stays at sub_batch x window x vocab floats.
"""

from __future__ import annotations

import numpy as np
import torch


def _start_id(tok) -> int:
    for t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
        if t is not None:
            return int(t)
    raise ValueError("the LM tokenizer has no BOS/EOS/PAD token to start a window with")


def tokenize_windows(tok, text: str, spans: list[tuple[int, int]], window: int):
    """Token ids and absolute character offsets of each span of ``text``, split into <= ``window`` tokens."""
    out = []
    for a, b in spans:
        enc = tok(text[a:b], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids = list(enc["input_ids"])
        offs = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2) + a
        for s in range(0, len(ids), window):
            out.append((ids[s : s + window], offs[s : s + window]))
    return out


@torch.inference_mode()
def sequence_nll(model, seqs: list[list[int]], pad_id: int, sub_batch: int = 2) -> list[np.ndarray]:
    """Per-token negative log-likelihood of tokens 1..n-1 of each sequence (index i -> token i + 1)."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    res: list[np.ndarray] = [np.zeros(0)] * len(seqs)
    device = next(model.parameters()).device
    for s in range(0, len(order), sub_batch):
        idx = order[s : s + sub_batch]
        n = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), n), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, : len(seqs[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu().numpy()
        for r, i in enumerate(idx):
            res[i] = nll[r, : len(seqs[i]) - 1]
    return res


def window_scores(model, tok, text: str, spans, window: int = 512, question: str | None = None, sub_batch: int = 2):
    """Surprisal of every token of ``text`` inside ``spans`` (split into <= ``window``-token windows), and,
    with a question, the mean NLL of the question appended after each window, reduced per span (min).

    Returns (offsets (T, 2), surprisal (T,), span_question_nll (S,) or None). One forward per window.
    """
    start = _start_id(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else start
    wins, owner = [], []
    for k, span in enumerate(spans):
        w = tokenize_windows(tok, text, [span], window)
        wins += w
        owner += [k] * len(w)
    q = tok("\n\nQuestion: " + question, add_special_tokens=False)["input_ids"] if question else []
    nll = sequence_nll(model, [[start, *ids, *q] for ids, _ in wins], pad, sub_batch)
    offs = np.concatenate([o for _, o in wins]) if wins else np.zeros((0, 2), np.int64)
    vals = np.concatenate([x[: len(ids)] for x, (ids, _) in zip(nll, wins)]) if wins else np.zeros(0)
    if not q:
        return offs, vals, None
    per_span = np.full(len(spans), np.inf)
    for k, x in zip(owner, nll):
        per_span[k] = min(per_span[k], float(x[-len(q) :].mean()))
    return offs, vals, per_span


def aggregate_to_pieces(piece_starts: np.ndarray, tok_offsets: np.ndarray, values: np.ndarray, n_pieces: int):
    """Mean of token values per piece (a token belongs to the piece holding its last character);
    pieces without tokens get NaN. Vectorized with searchsorted + bincount."""
    last_char = np.maximum(tok_offsets[:, 1] - 1, tok_offsets[:, 0])  # " the" belongs to the piece of "the"
    owner = np.searchsorted(piece_starts, last_char, side="right") - 1
    owner = np.clip(owner, 0, n_pieces - 1)
    total = np.bincount(owner, weights=values, minlength=n_pieces)
    count = np.bincount(owner, minlength=n_pieces)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
