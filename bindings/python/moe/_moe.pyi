from typing import Any, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

Message = dict[str, str]
PromptLike = Union[str, Sequence[int]]

class Completion:
    text: str
    token_ids: list[int]
    prompt_ids: list[int]
    finish_reason: str
    stop: Optional[str]
    logprobs: Optional[list[float]]
    top_logprobs: Optional[list[list[tuple[int, float]]]]

class PromptLogprobs:
    prompt_ids: npt.NDArray[np.int64]        # [T]
    prompt_logprobs: npt.NDArray[np.float32]  # [T], NaN at position 0
    token_ids: npt.NDArray[np.int64]          # [T, k]: the k most likely next tokens after each position
    logprobs: npt.NDArray[np.float32]         # [T, k]

class Tokenizer:
    vocab_size: int
    bos_id: Optional[int]
    eos_id: Optional[int]
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...
    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str: ...
    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]: ...

class Model:
    name: str
    vocab_size: int
    context_length: int
    tokenizer: Tokenizer
    device: str
    def __init__(
        self,
        model: Optional[str] = None,
        threads: Optional[int] = None,
        bf16_activations: bool = False,
        device: str = "cpu",
    ) -> None: ...
    def generate(
        self,
        prompts: Union[PromptLike, Sequence[PromptLike]],
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        n: int = 1,
        stop: Optional[Sequence[str]] = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        ignore_eos: bool = False,
    ) -> list[Completion]: ...
    def chat(self, conversations: Union[Sequence[Message], Sequence[Sequence[Message]]], **sampling: Any) -> list[Completion]: ...
    def score(self, prompt: str, continuations: Sequence[str]) -> list[float]: ...
    def prompt_logprobs(self, prompt: PromptLike, top_k: int = 5) -> PromptLogprobs: ...
    def logits(self, ids: Sequence[int]) -> npt.NDArray[np.float32]: ...
    def stats(self) -> dict[str, Any]: ...
    def reset_stats(self) -> None: ...
