"""The thinking step: a chat with any mlx-lm model, keeping its KV cache across turns.

`Chat` renders the history with the tokenizer's chat template and keeps one persistent prompt cache. Each turn
rewinds the cache to the longest prefix it shares with the newly rendered prompt and prefills only the rest: the
answer as the user heard it, the new user message and the generation prompt. Caches that cannot be trimmed
(sliding-window `RotatingKVCache` past its window, recurrent state) are restored from a checkpoint taken at the
end of the last prompt; failing that, the prompt is prefilled again from the start.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from assistant import hub
from assistant.config import LlmConfig
from assistant.errors import InputError, ModelError
from assistant.tools.calls import AUTO, GEMMA4, CallFormat, ToolCall, ToolChoice, detect_format

log = logging.getLogger("assistant.llm")

# Prompt tokens computed per next() of respond(): bounds one step's work, hence cancel latency and how long a
# long prompt (a 4,000-character ask) holds the compute thread before a voice reply's step (benchmarks/
# server_fairness.py: 512 delayed another client's first audio by 3 TTS chunk steps, 128 by a third of one).
PREFILL_STEP = 128
# The files a tokenizer loads from: fast (tokenizers), SentencePiece, BPE vocabulary, tiktoken.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
# When the history overflows llm.history_tokens, drop the oldest turns until it fits in this fraction of the
# budget, so a truncation (which invalidates the cache) happens once per several turns, not on every turn.
TRUNCATE_TO = 0.75
# The repetition penalty looks at this many recent tokens (mlx-lm's default).
REPETITION_CONTEXT = 20


@dataclass(frozen=True)
class Message:
    role: str  # "user", "assistant" or "tool"
    content: str
    interrupted: bool = False  # an assistant answer cut off by the user; content is the part they heard
    tool_calls: tuple[ToolCall, ...] = ()  # assistant: the calls it made after saying `content`
    tool_call_id: str = ""  # tool: the call this result answers (content = the result)
    name: str = ""  # tool: the tool's name

    def template_dict(self) -> dict[str, Any]:
        """The message as chat templates take it."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.template_dict() for c in self.tool_calls]
        if self.role == "tool":
            out.update(tool_call_id=self.tool_call_id, name=self.name)
        return out


@dataclass
class TurnStats:
    """What the last turn cost: how much of its prompt came from the cache and how much was computed."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefilled_tokens: int = 0
    generated_tokens: int = 0
    dropped_messages: int = 0
    restored_checkpoint: bool = False


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class History:
    """The conversation as recorded, oldest first. A chat engine (Chat, RemoteChat) owns one and changes it only
    through these operations; everyone else reads copies."""

    def __init__(self, messages: Sequence[Message] = ()) -> None:
        self._messages = list(messages)

    def messages(self) -> list[Message]:
        """A copy of the messages."""
        return list(self._messages)

    def __len__(self) -> int:
        return len(self._messages)

    def replace(self, messages: Sequence[Message]) -> None:
        self._messages = list(messages)

    def add_user(self, text: str) -> None:
        self._messages.append(Message("user", text))

    def add_answer(self, full: str, heard_text: str | None, complete: bool) -> None:
        """Record an answer: all of `full` (heard_text None) or what was heard; `complete`: it ended by itself."""
        heard = full if heard_text is None else heard_text.strip()
        self._messages.append(Message("assistant", heard, interrupted=heard != full or not complete))

    def add_tool_round(self, said: str, results: Sequence[tuple[ToolCall, str]], said_apart: bool = False) -> None:
        """An assistant message with the calls (after saying `said`; a message of its own when `said_apart`),
        then one tool message per result."""
        said = said.strip()
        if said and said_apart:
            self._messages.append(Message("assistant", said))
            said = ""
        self._messages.append(Message("assistant", said, tool_calls=tuple(call for call, _ in results)))
        self._messages += [Message("tool", text, tool_call_id=call.id, name=call.name) for call, text in results]

    def newest_turn(self) -> list[Message]:
        """The newest turn: its last user message and everything after it ([] without one)."""
        starts = [i for i, m in enumerate(self._messages) if m.role == "user"]
        return list(self._messages[starts[-1] :]) if starts else []

    def drop_newest_turn(self) -> None:
        """Forget the last user message and everything after it (an answer that was not needed)."""
        starts = [i for i, m in enumerate(self._messages) if m.role == "user"]
        if starts:
            del self._messages[starts[-1] :]

    def revise(self, recorded: str, heard: str) -> bool:
        """The newest assistant answer recorded as `recorded` becomes the `heard` part; True when one was changed."""
        for i in range(len(self._messages) - 1, -1, -1):
            m = self._messages[i]
            if m.role == "assistant" and m.content.strip() == recorded.strip():
                self._messages[i] = Message("assistant", heard.strip(), interrupted=True)
                return True
        return False

    def forget(self, role: str, text: str) -> bool:
        """Forget the newest `role` message whose text is `text` (a truncated answer matches the text it was cut
        from); neighbours of the same role are then joined, so user and assistant turns still alternate (chat
        templates require it). False when there is no such message."""
        for i in range(len(self._messages) - 1, -1, -1):
            m = self._messages[i]
            same = m.content.strip() == text.strip() or (m.interrupted and text.strip().startswith(m.content.strip()))
            if m.role == role and same:
                kept: list[Message] = []
                for other in self._messages[:i] + self._messages[i + 1 :]:
                    if kept and kept[-1].role == other.role and other.role in ("user", "assistant"):
                        kept[-1] = dataclasses.replace(kept[-1], content=f"{kept[-1].content}\n{other.content}")
                    else:
                        kept.append(other)
                self._messages = kept
                return True
        return False

    def drop_oldest_turn(self, keep_newest: bool = True) -> int:
        """Drop the oldest turn (up to the next user message, so roles still alternate); returns how many messages
        went. With `keep_newest` the last turn is never dropped (0 when only it is left)."""
        n = next((i for i, m in enumerate(self._messages) if i and m.role == "user"), 0 if keep_newest else None)
        n = len(self._messages) if n is None else n
        del self._messages[:n]
        return n

    def trim(self, over: Callable[[list[Message]], bool]) -> int:
        """Drop the oldest turns while `over(messages)`, the newest too if it must; returns how many went."""
        before = len(self._messages)
        while self._messages and over(self._messages):
            self.drop_oldest_turn(keep_newest=False)
        return before - len(self._messages)


def close_answer(active: Iterator[str] | None) -> None:
    """Close an answer's generator (its `finally` cancels the work in progress)."""
    close = getattr(active, "close", None)
    if close is not None:
        close()


class PromptCache:
    """The model's per-layer KV cache and the exact tokens it holds, rewindable to a prefix of them.

    Invariant: every layer cache holds exactly `len(tokens)` positions, the KV of `tokens`.
    """

    def __init__(self, model: Any) -> None:
        from mlx_lm.models import cache as mlc

        self._model = model
        self._mlc = mlc
        # Cache types that can be trimmed by any amount at any time; the others are checkpointed by copy.
        self._always_trimmable: tuple[type, ...] = (mlc.KVCache, mlc.QuantizedKVCache, mlc.ConcatenateKVCache)
        self.layers: list[Any] = mlc.make_prompt_cache(model)
        self.tokens: list[int] = []
        self._checkpoint: tuple[int, dict[int, Any]] | None = None
        self.rewinds = {"trim": 0, "checkpoint": 0, "clear": 0}  # how each rewind was done, for tests and logs

    def clear(self) -> None:
        self.layers = self._mlc.make_prompt_cache(self._model)
        self.tokens = []
        self._checkpoint = None

    def _truncate(self, n: int) -> None:
        self.tokens = self.tokens[:n]
        if self._checkpoint is not None and self._checkpoint[0] > n:
            self._checkpoint = None

    def rewind(self, target: Sequence[int], keep_last: bool = True) -> tuple[int, bool]:
        """Rewind to the longest usable prefix of `target`; returns (its length, whether a checkpoint was used).

        With `keep_last`, at least the last token of `target` is left to compute, so its logits come out.
        """
        keep = _common_prefix(self.tokens, target)
        if keep_last:
            keep = min(keep, len(target) - 1)
        if keep == len(self.tokens):
            return keep, False
        if self._mlc.can_trim_prompt_cache(self.layers):
            self._mlc.trim_prompt_cache(self.layers, len(self.tokens) - keep)
            self._truncate(keep)
            self.rewinds["trim"] += 1
            return keep, False
        if self._checkpoint is not None and self._checkpoint[0] <= keep:
            n, saved = self._checkpoint
            drop = len(self.tokens) - n
            for i, layer in enumerate(self.layers):
                if i in saved:
                    self.layers[i] = copy.deepcopy(saved[i])
                else:
                    layer.trim(drop)
            self._truncate(n)
            self.rewinds["checkpoint"] += 1
            return n, True
        self.clear()
        self.rewinds["clear"] += 1
        return 0, False

    def feed(self, tokens: Sequence[int]) -> mx.array:
        """Run `tokens` through the model into the cache; returns the logits of the last one, evaluated."""
        logits = self._model(mx.array(list(tokens), dtype=mx.int32)[None], cache=self.layers)[0, -1]
        mx.eval(logits, [c.state for c in self.layers])
        self.tokens.extend(tokens)
        out: mx.array = logits
        return out

    def prefill(self, tokens: Sequence[int]) -> None:
        """Run `tokens` into the cache only: the output projection (a 262k vocabulary for Gemma) is never computed."""
        self._model(mx.array(list(tokens), dtype=mx.int32)[None], cache=self.layers)
        mx.eval([c.state for c in self.layers])
        self.tokens.extend(tokens)

    def save_checkpoint(self) -> None:
        """Remember the state at the current position, so a later turn can come back to it."""
        saved = {i: copy.deepcopy(c) for i, c in enumerate(self.layers) if not isinstance(c, self._always_trimmable)}
        self._checkpoint = (len(self.tokens), saved)


class Chat:
    """A conversation with an mlx-lm chat model: history, persistent prompt cache, streaming answers.

    All methods run on the one thread that owns MLX. `respond()` returns a generator doing one step of work per
    `next()` (a prompt chunk of `PREFILL_STEP` tokens, or one sampled token); closing it cancels the answer.
    Then `finish_turn()` records what the user heard.
    """

    def __init__(self, model: Any, tokenizer: Any, cfg: LlmConfig) -> None:
        from mlx_lm.sample_utils import make_logits_processors

        if not getattr(tokenizer, "has_chat_template", False):
            raise ModelError(
                f"LLM `{cfg.model}` has no chat template; use an instruction-tuned (-it / -instruct) model"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self._history = History()  # owned here: others read `history` and ask for changes
        self.stats = TurnStats()
        self.cache = PromptCache(model)
        self._system = cfg.system_prompt
        self.set_temperature(cfg.temperature)
        self._processors = make_logits_processors(
            repetition_penalty=cfg.repetition_penalty if cfg.repetition_penalty != 1.0 else None,
            repetition_context_size=REPETITION_CONTEXT,
        )
        self._eos = set(tokenizer.eos_token_ids)
        self._answer: list[str] | None = None  # text of the answer not yet recorded by finish_turn()
        self._answer_tokens: list[int] = []
        self._complete = False  # the answer ended by itself (end of turn or max_tokens), not cancelled
        self._active: Iterator[str] | None = None
        self._tools: list[dict[str, Any]] = []
        self._choice = AUTO
        if cfg.seed >= 0:
            mx.random.seed(cfg.seed)

    @classmethod
    def load(cls, cfg: LlmConfig) -> Chat:
        """Load `llm.model` (a Hugging Face repo id in the local cache, or a folder). Raises ModelError."""
        path = hub.resolve(cfg.model, "LLM")
        from mlx_lm import load as mlx_load

        try:
            model, tokenizer, *_ = mlx_load(str(path))
        except Exception as e:  # mlx-lm raises ValueError, FileNotFoundError, KeyError... for bad folders
            has_tokenizer = any((path / n).is_file() for n in TOKENIZER_FILES) or any(path.glob("*.tiktoken"))
            if (path / "config.json").is_file() and not has_tokenizer:
                raise ModelError(  # transformers' own message is six lines about sentencepiece
                    f"LLM `{cfg.model}` has no tokenizer file in {path} (tokenizer.json, tokenizer.model, "
                    "vocab.json or *.tiktoken); run `assistant pull` again, or copy the model's tokenizer files in"
                ) from e
            detail = " ".join(str(e).split())[:300]  # one line
            raise ModelError(
                f"LLM `{cfg.model}` failed to load from {path}: {type(e).__name__}: {detail}; check that the folder "
                "holds an mlx-lm model (config.json, *.safetensors, tokenizer files) of a supported architecture"
            ) from e
        return cls(model, tokenizer, cfg)

    # ---- conversation state --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the conversation. The cache is kept: the next turn reuses its system-prompt prefix."""
        self._cancel()
        self._answer = None
        self._history.replace([])

    @property
    def history(self) -> list[Message]:
        """The conversation as recorded (a copy: change it through the methods below)."""
        return self._history.messages()

    def discard_answer(self) -> None:
        """Drop the answer in progress and the user message it answers, as if neither happened (speculation).

        The prompt cache rewinds to the longest common prefix on the next turn.
        """
        self._cancel()
        if self._answer is None:
            return
        self._answer = None
        self._history.drop_newest_turn()  # the user message and any tool rounds after it

    def revise_answer(self, recorded: str, heard: str) -> bool:
        """The listener heard only `heard` of the latest answer recorded as `recorded`; True when one was changed."""
        return self._history.revise(recorded, heard)

    def set_system_prompt(self, text: str) -> None:
        """Use `text` as the system prompt from the next turn on ("" = none)."""
        self._system = text.strip()

    @property
    def system_prompt(self) -> str:
        return self._system

    def set_temperature(self, value: float) -> None:
        """Sample at `value` (0 = greedy) from the next token on, with llm.top_p/min_p/top_k as they are."""
        from mlx_lm.sample_utils import make_sampler

        c = self.cfg
        self._sampler = make_sampler(value, top_p=c.top_p, min_p=c.min_p, top_k=c.top_k)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
        """The token ids of the system prompt plus `messages`, through the tokenizer's chat template."""
        tools = {"tools": self._tools} if self._tools and self._choice.mode != "none" else {}
        turns = [m.template_dict() for m in messages]
        if self._system:
            turns.insert(0, {"role": "system", "content": self._system})
        try:
            ids = self.tokenizer.apply_chat_template(
                turns, add_generation_prompt=add_generation_prompt, tokenize=True, enable_thinking=False, **tools
            )
        except Exception as e:  # jinja raises TemplateError for what a template does not accept
            if not self._system or "system" not in str(e).lower():
                raise ModelError(f"the chat template of `{self.cfg.model}` failed: {e}") from e
            # A template without a system role: the instructions go in front of the first user message.
            turns = turns[1:]
            if turns:
                turns[0] = {"role": "user", "content": f"{self._system}\n\n{turns[0]['content']}"}
            ids = self.tokenizer.apply_chat_template(
                turns, add_generation_prompt=add_generation_prompt, tokenize=True, enable_thinking=False, **tools
            )
        return list(ids)

    def _fit_history(self) -> tuple[list[int], int]:
        """The prompt for the current history; drops the oldest turns when it exceeds `llm.history_tokens`."""
        prompt = self.render(self._history.messages(), add_generation_prompt=True)
        if len(prompt) <= self.cfg.history_tokens:
            return prompt, 0
        dropped = 0
        target = int(self.cfg.history_tokens * TRUNCATE_TO)
        # Drop whole turns (tool rounds included) so roles keep alternating; the newest turn stays.
        while len(prompt) > target and (n := self._history.drop_oldest_turn()):
            dropped += n
            prompt = self.render(self._history.messages(), add_generation_prompt=True)
        log.info("history over %d tokens: dropped %d oldest messages", self.cfg.history_tokens, dropped)
        return prompt, dropped

    # ---- one turn ------------------------------------------------------------------------------------------

    def respond(self, user_text: str) -> Iterator[str]:
        """Start answering `user_text`; the generator yields text deltas ("" during prefill), one step each.

        An answer still open from the previous turn is recorded whole first. Raises InputError on empty text.
        """
        text = user_text.strip()
        if not text:
            raise InputError("the user message is empty; say or type something")
        self._cancel()
        if self._answer is not None:
            self.finish_turn(None)
        self._history.add_user(text)
        try:
            return self._start()
        except ModelError:  # the template refused the prompt: a user message left unanswered breaks every next turn
            self._history.drop_newest_turn()
            raise

    def _start(self) -> Iterator[str]:
        """Open an answer to the history as it stands (first fitted to the budget)."""
        prompt, dropped = self._fit_history()
        self._answer, self._answer_tokens, self._complete = [], [], False
        self._active = self._generate(prompt, dropped)
        return self._active

    def _generate(self, prompt: list[int], dropped: int) -> Iterator[str]:
        forced = self._forced()
        prompt = prompt + forced  # a forced call opening is part of the answer, computed like the prompt
        start, restored = self.cache.rewind(prompt)
        self.stats = TurnStats(len(prompt), start, len(prompt) - start, 0, dropped, restored)
        answer, generated = self._answer, self._answer_tokens
        assert answer is not None
        # All but the last prompt token go in cache-only, a chunk per step; the last one gives the first logits.
        rest = prompt[start:]
        while len(rest) > 1:
            self.cache.prefill(rest[: min(PREFILL_STEP, len(rest) - 1)])
            rest = rest[min(PREFILL_STEP, len(rest) - 1) :]
            if len(rest) > 1:
                yield ""
        logits = self.cache.feed(rest)
        checkpointed = False
        if forced:
            generated += forced
            answer.append(self.tokenizer.decode(forced))
            yield answer[-1]
        try:
            detokenizer = self.tokenizer.detokenizer
            for n in range(self.cfg.max_tokens):
                if n:
                    if not checkpointed:  # after the first delta is out: copying the cache must not delay it
                        self.cache.save_checkpoint()
                        checkpointed = True
                    # The token yielded last step enters the cache now, so each delta comes one forward sooner.
                    logits = self.cache.feed(generated[-1:])
                token = self._sample(logits, self.cache.tokens)
                if token in self._eos:
                    break
                generated.append(token)
                self.stats.generated_tokens = len(generated)
                detokenizer.add_token(token)
                delta = detokenizer.last_segment
                answer.append(delta)
                yield delta
            detokenizer.finalize()
            tail = detokenizer.last_segment
            self._complete = True
            if tail:
                answer.append(tail)
                yield tail
        finally:
            if not checkpointed and len(self.cache.tokens) == len(prompt):
                self.cache.save_checkpoint()

    def _sample(self, logits: mx.array, tokens: Sequence[int]) -> int:
        logits = logits[None]
        if self._processors:
            context = mx.array(list(tokens[-REPETITION_CONTEXT:]), dtype=mx.int32)
            for processor in self._processors:
                logits = processor(context, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return int(self._sampler(logprobs).item())  # type: ignore[arg-type]

    def warmup(self) -> None:
        """Run what a turn runs (prompt chunks, the first logits, sampled tokens fed back) on a scratch cache, so
        MLX compiles those kernels now, not in the first user's answer (49 s on a fresh CUDA machine for Gemma 4
        E2B); the history and the prompt cache are untouched, and a seeded sampler restarts from its seed."""
        prompt = self.render([Message("user", "Hello, what can you do?")], add_generation_prompt=True)
        scratch = PromptCache(self.model)
        for i in range(0, len(prompt) - 1, PREFILL_STEP):
            scratch.prefill(prompt[i : min(i + PREFILL_STEP, len(prompt) - 1)])
        logits = scratch.feed(prompt[-1:])
        for _ in range(2):
            logits = scratch.feed([self._sample(logits, scratch.tokens)])
        if self.cfg.seed >= 0:
            mx.random.seed(self.cfg.seed)

    def _cancel(self) -> None:
        close_answer(self._active)
        self._active = None

    @property
    def answer(self) -> str:
        """The text of the current answer so far ("" once recorded by finish_turn())."""
        return "".join(self._answer or [])

    @property
    def answer_tokens(self) -> list[int]:
        """The token ids of the last answer generated (kept after finish_turn())."""
        return list(self._answer_tokens)

    def finish_turn(self, heard_text: str | None) -> None:
        """Record the answer: None = all of it; a string = only what the user heard before interrupting.

        Cancels generation if still running and trims the prompt cache to the history as recorded.
        """
        self._cancel()
        if self._answer is None:
            return
        full = "".join(self._answer).strip()
        self._answer = None
        self._history.add_answer(full, heard_text, self._complete)
        # Rewind now (cheap), so the next turn only prefills the heard answer's tail and the new message.
        try:
            self.cache.rewind(self.render(self._history.messages(), add_generation_prompt=False), keep_last=False)
        except ModelError:
            pass  # a template that cannot end on an assistant turn: the next respond() rewinds instead

    # ---- tools and memory (issue 14) ----------------------------------------------------------------------

    def set_tools(self, schemas: Sequence[Mapping[str, Any]], choice: ToolChoice = AUTO) -> bool:
        """Offer these tools (OpenAI-style `{"type": "function", "function": {...}}` schemas) from the next prompt
        on; [] = none. The tool list is part of the prompt's start, so changing it costs one full prefill.
        `choice` "none" leaves them out of the prompt; "required" / a function makes each answer begin with the
        opening of a call in the model's own format (that call's name for a function), so the model writes a call.

        Returns False (and offers nothing) when the model's chat template has no tool-call format.
        """
        if schemas and self.tool_format is None:
            log.warning("LLM `%s` has no tool-call format in its chat template: tools are off", self.cfg.model)
            self._tools, self._choice = [], AUTO
            return False
        self._tools = [dict(s) for s in schemas]
        self._choice = choice if self._tools else AUTO
        return True

    def _forced(self) -> list[int]:
        """The tokens every answer begins with under the tool choice ([] when the model chooses)."""
        text = self.tool_format.forced(self._choice) if self.tool_format is not None else ""
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    @functools.cached_property
    def tool_format(self) -> CallFormat | None:
        """How this model writes tool calls (from its chat template); None when it has no tool format."""
        template = getattr(self.tokenizer, "chat_template", None)
        found = detect_format(template)
        if found is None and hasattr(self.tokenizer, "get_vocab"):  # some conversions only have the tokens
            found = detect_format(template, self.tokenizer.get_vocab())
        return found

    @property
    def can_call_tools(self) -> bool:
        """Whether set_tools can offer this model tools: its chat template has a tool-call format."""
        return self.tool_format is not None

    def continue_with_results(self, said: str, results: Sequence[tuple[ToolCall, str]]) -> Iterator[str]:
        """Continue the current answer after a tool round; returns a generator like respond()'s.

        `said` is what the answer said before the calls (the speech, without call text); `results` pairs each
        call with its result text. Both are recorded in the history, then the answer goes on from the cache:
        only the tokens after the common prefix of cache and re-rendered prompt are computed.
        Raises InputError when no answer is open (respond() first) or `results` is empty.
        """
        if self._answer is None:
            raise InputError("no answer is open to continue; tool results need a respond() first")
        if not results:
            raise InputError("a tool round needs at least one call and its result")
        self._cancel()
        # Gemma 4's template renders a message's content after its tool results: what was said before the calls
        # becomes a message of its own, so the prompt keeps the order things were said in.
        self._history.add_tool_round(said, results, said_apart=self.tool_format is GEMMA4)
        return self._start()

    def token_usage(self) -> dict[str, float]:
        """The last generation's token counts: its prompt, the part of it reused from the cache, its output."""
        s = self.stats
        return {"prompt_tokens": s.prompt_tokens, "cached_tokens": s.reused_tokens, "output_tokens": s.generated_tokens}

    def last_turn(self) -> list[Message]:
        """The messages of the newest turn: its user message and everything after it (for the memory store)."""
        return self._history.newest_turn()

    def restore(self, messages: Sequence[Message]) -> int:
        """Start from a stored history (at daemon start): drops the oldest turns beyond `llm.history_tokens`.

        Returns how many messages were dropped. Any open answer is discarded.
        """
        self._cancel()
        self._answer = None
        self._history.replace(messages)
        return self._history.trim(lambda m: len(self.render(m, add_generation_prompt=False)) > self.cfg.history_tokens)
