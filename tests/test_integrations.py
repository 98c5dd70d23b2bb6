"""LangChain compressor and LlamaIndex postprocessor (skipped when the optional packages are absent)."""

from __future__ import annotations

import numpy as np
import pytest

from tokenreduce.bench.encoder import default_model_path
from tokenreduce.integrations import split_by_documents
from tokenreduce.prompt import PromptCompressor, resolve_counter

DOCS = [
    "Paris is the capital of France. It has many museums.",
    "Bananas are yellow. They grow in warm places.",
    "The Eiffel Tower is in Paris. It was built in 1889.",
]
Q = "When was the Eiffel Tower built?"


@pytest.fixture(scope="module")
def counter():
    return resolve_counter(str(default_model_path()))


def test_split_by_documents(counter):
    res = PromptCompressor("first", tokenizer=counter)(DOCS, rate=0.5)
    parts = split_by_documents(res, DOCS)
    assert len(parts) == 3 and parts[0] and all(p in d for p, d in zip(parts, DOCS) if p)
    full = PromptCompressor("first", tokenizer=counter)(DOCS, rate=1.0)
    assert split_by_documents(full, DOCS) == DOCS


def test_langchain_compressor(counter):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from tokenreduce.integrations.langchain import TokenreduceCompressor

    comp = TokenreduceCompressor(rate=0.4, tokenizer=counter)
    out = comp.compress_documents([Document(page_content=d, metadata={"i": i}) for i, d in enumerate(DOCS)], Q)
    assert any("1889" in d.page_content for d in out)
    total = sum(counter.count(d.page_content) for d in out)
    assert total <= np.ceil(0.4 * counter.count("\n\n".join(DOCS))) + len(out)
    assert all("tokenreduce" in d.metadata and "i" in d.metadata for d in out)


def test_llamaindex_postprocessor(counter):
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    from tokenreduce.integrations.llamaindex import TokenreducePostprocessor

    pp = TokenreducePostprocessor(rate=0.4, tokenizer=counter)
    nodes = [NodeWithScore(node=TextNode(text=d), score=1.0 - i / 10) for i, d in enumerate(DOCS)]
    out = pp.postprocess_nodes(nodes, query_str=Q)
    assert any("1889" in n.node.get_content() for n in out)
    assert all(n.score is not None for n in out)
