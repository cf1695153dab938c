"""moe: a sparse mixture-of-experts inference engine (Rust), for Python.

>>> import moe
>>> model = moe.Model()                      # the embedded student; or a directory / models.toml preset
>>> model.chat([{"role": "user", "content": "What is 24 plus 17?"}], temperature=0)[0].text
'41'
"""

from ._moe import Completion, Model, PromptLogprobs, Tokenizer

__all__ = ["Completion", "Model", "PromptLogprobs", "Tokenizer"]
