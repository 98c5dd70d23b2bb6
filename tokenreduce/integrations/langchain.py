"""LangChain document compressor: compress retrieved documents to one global token budget.

    from tokenreduce.integrations.langchain import TokenreduceCompressor
    compressor = TokenreduceCompressor(rate=0.25)            # extractive, question-aware
    docs = compressor.compress_documents(docs, "user question")

Use it inside ``ContextualCompressionRetriever(base_compressor=compressor, base_retriever=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from pydantic import ConfigDict, PrivateAttr

from ..prompt import PromptCompressor
from .common import split_by_documents


class TokenreduceCompressor(BaseDocumentCompressor):
    """Keeps the parts of the documents most relevant to the query within ``rate`` / ``target_tokens``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    rate: float | None = 0.25
    target_tokens: int | None = None
    method: str = "extractive"
    tokenizer: Any = None
    method_params: dict = {}
    _compressor: PromptCompressor | None = PrivateAttr(default=None)

    def _get(self) -> PromptCompressor:
        if self._compressor is None:
            self._compressor = PromptCompressor(self.method, self.tokenizer, **self.method_params)
        return self._compressor

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Any = None
    ) -> Sequence[Document]:
        docs = list(documents)
        if not docs:
            return []
        texts = [d.page_content for d in docs]
        res = self._get()(texts, query, rate=self.rate, target_tokens=self.target_tokens)
        out = []
        for d, text in zip(docs, split_by_documents(res, texts)):
            if text:
                meta = {**d.metadata, "tokenreduce": res.stats()}
                out.append(Document(page_content=text, metadata=meta))
        return out
