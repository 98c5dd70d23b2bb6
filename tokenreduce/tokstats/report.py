"""Run the tokenizer-efficiency analysis over FLORES-200 parallel text and draw the parity chart."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .load import Tok
from .stats import cost_per_request, parity, text_stats, vocab_audit

FLORES_DIR = Path("flores200")
DEFAULT_LANGS = (
    "eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "ell_Grek", "tur_Latn", "arb_Arab", "heb_Hebr",
    "hin_Deva", "ben_Beng", "tam_Taml", "tha_Thai", "vie_Latn", "zho_Hans", "jpn_Jpan", "kor_Hang", "swh_Latn",
    "amh_Ethi", "yor_Latn",
)  # fmt: skip


def flores_lines(data_dir: Path, lang: str, split: str = "devtest") -> list[str]:
    path = data_dir / FLORES_DIR / split / f"{lang}.{split}"
    if not path.is_file():
        raise FileNotFoundError(f"FLORES-200 file {path} not found (languages: see {path.parent})")
    return path.read_text(encoding="utf-8").splitlines()


def analyse(
    toks: Sequence[Tok],
    texts: dict[str, list[str]],
    reference: str = "eng_Latn",
    prices: dict[str, float] | None = None,
    request_lines: int = 1,
    on_step: Callable[[], None] | None = None,
) -> dict[str, list[dict]]:
    """Rows for three tables: per (tokenizer, language) efficiency, per tokenizer vocabulary audit, and cost."""
    lang_rows, vocab_rows, cost_rows = [], [], []
    for tok in toks:
        per = {}
        for lang, lines in texts.items():
            per[lang] = text_stats(tok, lines)
            if on_step:
                on_step()
        par = parity({k: int(v["tokens"]) for k, v in per.items()}, reference)
        for lang, s in per.items():
            lang_rows.append({"tokenizer": tok.name, "lang": lang, **s, "parity": par[lang]})
            if prices and tok.name in prices:
                per_req = s["tokens"] / len(texts[lang]) * request_lines
                cost_rows.append(
                    {
                        "tokenizer": tok.name,
                        "lang": lang,
                        "tokens_per_request": per_req,
                        "usd_per_request": cost_per_request(per_req, prices[tok.name]),
                        "usd_per_1k_requests": 1000 * cost_per_request(per_req, prices[tok.name]),
                        "premium": par[lang],
                    }
                )
        vocab_rows.append({"tokenizer": tok.name, **vocab_audit(tok)})
    return {"languages": lang_rows, "vocab": vocab_rows, "cost": cost_rows}


def plot_parity(rows: list[dict], out: str | Path, reference: str = "eng_Latn") -> Path:
    """Grouped bar chart: token premium per language (x) for each tokenizer (bars), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    toks = list(dict.fromkeys(r["tokenizer"] for r in rows))
    langs = list(dict.fromkeys(r["lang"] for r in rows))
    val = {(r["tokenizer"], r["lang"]): r["parity"] for r in rows}
    fig, ax = plt.subplots(figsize=(min(16, max(8, 0.5 * len(langs) + 2)), 5))
    w = 0.8 / len(toks)
    x = np.arange(len(langs))
    for i, t in enumerate(toks):
        ax.bar(x + i * w - 0.4 + w / 2, [val.get((t, lang), np.nan) for lang in langs], w, label=t)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(x, langs, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"tokens relative to {reference} (parity)")
    ax.set_title(
        "Token premium on FLORES-200 parallel sentences\n(bars below 1 can mean UNK tokens: see unk_share)",
        fontsize=10,
    )
    ax.legend(fontsize=7, ncol=min(4, len(toks)))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
