"""Optional integrations: a LangChain document compressor and a LlamaIndex node postprocessor.

Import the submodule you need (``tokenreduce.integrations.langchain`` needs ``langchain-core``,
``tokenreduce.integrations.llamaindex`` needs ``llama-index-core``); this package imports neither.
"""

from .common import split_by_documents

__all__ = ["split_by_documents"]
