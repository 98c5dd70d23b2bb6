"""LlamaIndex node postprocessor: compress retrieved nodes to one global token budget.

from tokenreduce.integrations.llamaindex import TokenreducePostprocessor
engine = index.as_query_engine(node_postprocessors=[TokenreducePostprocessor(rate=0.25)])
"""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from ..prompt import PromptCompressor
from .common import split_by_documents


class TokenreducePostprocessor(BaseNodePostprocessor):
    """Keeps the parts of the nodes most relevant to the query within ``rate`` / ``target_tokens``."""

    rate: float | None = 0.25
    target_tokens: int | None = None
    method: str = "extractive"
    tokenizer: Any = None
    method_params: dict = {}
    _compressor: Any = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "TokenreducePostprocessor"

    def _get(self) -> PromptCompressor:
        if self._compressor is None:
            self._compressor = PromptCompressor(self.method, self.tokenizer, **self.method_params)
        return self._compressor

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        texts = [n.node.get_content() for n in nodes]
        query = query_bundle.query_str if query_bundle is not None else None
        res = self._get()(texts, query, rate=self.rate, target_tokens=self.target_tokens)
        out = []
        for n, text in zip(nodes, split_by_documents(res, texts)):
            if text:
                node = TextNode(text=text, metadata={**n.node.metadata, "tokenreduce_ratio": round(res.ratio, 3)})
                out.append(NodeWithScore(node=node, score=n.score))
        return out
