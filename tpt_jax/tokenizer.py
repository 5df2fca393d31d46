"""Text <-> token ids and chat templates on the Rust `tokenizers` package (no torch needed).

`Tokenizer` reads and writes Hugging Face tokenizer directories so that
`transformers.AutoTokenizer.from_pretrained` loads what we save with the same ids, and reads a bare
SentencePiece `tokenizer.model` (Google's JAX releases) into the same form. Chat templates are
rendered by transformers itself when it is installed (imported on first use), else by a copy of
its jinja environment. The `build_*` helpers assemble a `tokenizers.Tokenizer` from a bare
vocabulary (what a GGUF file or a SentencePiece model stores); `tpt_jax.gguf_io` decides which one
a file needs.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

# Tokens that end an assistant turn in the chat formats we meet; the engine stops on any of them.
END_OF_TURN_TOKENS = (
    "<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>",
)  # fmt: skip
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")

# The chat formats of the families whose releases can come without a template (Google's JAX
# checkpoints ship a bare SentencePiece tokenizer.model), verbatim from the instruction-tuned
# models' tokenizer_config.json on the Hugging Face Hub (Gemma 1 and 2 share one).
GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""
FAMILY_CHAT_TEMPLATES = {"gemma2": GEMMA2_CHAT_TEMPLATE, "gemma3": GEMMA3_CHAT_TEMPLATE}


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the special tokens and chat template transformers keeps."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
    ):
        self.backend = backend
        given = dict(zip(_SPECIAL_NAMES, (bos_token, eos_token, unk_token, pad_token), strict=True))
        for name in ("bos_token", "eos_token"):
            if given[name] is not None and backend.token_to_id(given[name]) is None:
                raise ValueError(f"{name} {given[name]!r} is not in the vocabulary")
        # An unk / pad token missing from the vocabulary is dropped: transformers would append it
        # as a new id that the model has no embedding row for.
        self.special_tokens = {
            name: tok
            for name, tok in given.items()
            if tok is not None and backend.token_to_id(tok) is not None
        }
        self.chat_template = chat_template
        # What a template's `strftime_now` reads (Llama 3.x writes today's date into the system
        # turn). None: the wall clock, as transformers; a run fixes it so its prompts never change.
        self.template_time: datetime | None = None

    # --- ids -----------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of `text`; like transformers, BOS (where the model uses one) is added by default."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    def _special_id(self, name: str) -> int | None:
        tok = self.special_tokens.get(name)
        return None if tok is None else self.backend.token_to_id(tok)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """EOS first, then every end-of-turn token the vocabulary has (deduplicated)."""
        ids = [self.eos_token_id] + [self.backend.token_to_id(t) for t in END_OF_TURN_TOKENS]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    # --- chat ----------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = True,
        *,
        continue_final_message: bool = False,
        **template_kwargs: Any,
    ) -> list[int] | str:
        """Render `messages` with the chat template: ids (no special tokens added) or the string.

        transformers renders it when installed, exactly as its own `apply_chat_template` (tools
        given as Python functions, `continue_final_message`: the last message left open for the
        model to continue, with no generation prompt after it); `template_kwargs` reach the
        template as variables (`tools`, `documents`, `date_string`, ...) and win over the special
        tokens of the same name.
        """
        if not self.chat_template:
            raise ValueError(
                "this tokenizer has no chat template (a base model?); write the prompt as text"
            )
        # transformers refuses both at once; our default prompt gives way to an explicit continue
        add_generation_prompt = add_generation_prompt and not continue_final_message
        render = _transformers_renderer()
        if render is None:
            text = _render_without_transformers(
                self.chat_template,
                messages,
                add_generation_prompt,
                continue_final_message,
                self.template_time,
                {**self.special_tokens, **template_kwargs},
            )
        else:
            kwargs = {**self.special_tokens, **template_kwargs}
            with _frozen_clock(self.template_time):
                (text,), _ = render(
                    conversations=[copy.deepcopy([dict(m) for m in messages])],  # it edits them
                    tools=kwargs.pop("tools", None),
                    documents=kwargs.pop("documents", None),
                    chat_template=self.chat_template,
                    continue_final_message=continue_final_message,
                    add_generation_prompt=add_generation_prompt,
                    **kwargs,
                )
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # --- Hugging Face directories --------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Tokenizer:
        """Read a HF tokenizer directory: tokenizer.json plus its config and template files."""
        d = Path(directory)
        if not (d / "tokenizer.json").is_file():
            raise FileNotFoundError(
                f"{d}: no tokenizer.json (only fast-tokenizer directories load)"
            )
        backend = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
        config = _read_json(d / "tokenizer_config.json")
        special_map = _read_json(d / "special_tokens_map.json")
        special = {
            name: _token_text(config.get(name, special_map.get(name))) for name in _SPECIAL_NAMES
        }
        template = _pick_template(config.get("chat_template"))
        if (d / "chat_template.jinja").is_file():  # transformers >= 4.52 writes templates here
            template = (d / "chat_template.jinja").read_text(encoding="utf-8")
        elif (d / "chat_template.json").is_file():
            template = _pick_template(_read_json(d / "chat_template.json").get("chat_template"))
        return cls(backend, chat_template=template, **special)

    @classmethod
    def from_sentencepiece(
        cls,
        model_file: str | Path,
        *,
        family: str | None = None,
        chat_template: str | None = None,
    ) -> Tokenizer:
        """A SentencePiece `tokenizer.model` with no tokenizer.json beside it (Google's JAX
        releases), rebuilt as transformers' converter rebuilds it, so it encodes as SentencePiece
        does and saves as a HF directory. The chat template is `chat_template`, else the known
        format of `family` (`FAMILY_CHAT_TEMPLATES`: "gemma2", "gemma3"), else none.

        Reads models built as Gemma's: BPE, no normalization, no dummy prefix, no whitespace
        removal (others are refused: LLaMA 2's dummy prefix would differ on leading spaces).
        Needs the `sentencepiece` package (and protobuf).
        """
        path = Path(model_file)
        proto = _read_sentencepiece(path)
        norm, spec = proto.normalizer_spec, proto.trainer_spec
        if spec.model_type != 2:  # TrainerSpec.BPE
            raise ValueError(f"{path}: only BPE SentencePiece models load (Gemma's)")
        if (
            norm.name not in ("identity", "")
            or norm.add_dummy_prefix
            or norm.remove_extra_whitespaces
        ):
            raise ValueError(
                f"{path}: only SentencePiece models normalized as Gemma's load (identity, no "
                f"dummy prefix, whitespace kept); this one: {norm.name!r}, dummy prefix "
                f"{norm.add_dummy_prefix}, whitespace removal {norm.remove_extra_whitespaces}"
            )
        tokens = [p.piece for p in proto.pieces]
        if "\t" not in tokens and "<0x09>" in tokens:
            # As transformers' Gemma converter: older Gemma vocabularies spell the tab as its byte
            # piece, and merges such as "\t\t" need it spelled as text (its id is unchanged).
            tokens[tokens.index("<0x09>")] = "\t"
        # A BPE model lists its pieces in merge order (as transformers' converter reads them)
        merges = merges_from_ranking(tokens, {t: -i for i, t in enumerate(tokens)})

        def piece(i: int) -> str | None:
            return tokens[i] if 0 <= i < len(tokens) else None

        special = {
            "bos_token": piece(spec.bos_id),
            "eos_token": piece(spec.eos_id),
            "unk_token": piece(spec.unk_id),
            "pad_token": piece(spec.pad_id),
        }
        backend = build_sentencepiece_bpe(
            tokens, merges, special["unk_token"] or "<unk>", gemma=True
        )
        kinds = [p.type for p in proto.pieces]
        control = [t for t, k in zip(tokens, kinds, strict=True) if k == 3]  # CONTROL
        user = [t for t, k in zip(tokens, kinds, strict=True) if k == 4]  # USER_DEFINED
        add_vocab_tokens(backend, control, user)
        set_special_post_processor(backend, special["bos_token"], None)  # BOS, as HF's Gemma
        template = chat_template or FAMILY_CHAT_TEMPLATES.get(family or "")
        return cls(backend, chat_template=template, **special)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(d / "tokenizer.json"))
        # The generic fast class loads tokenizer.json untouched in transformers 4.x and 5.x; a
        # model-specific class (GemmaTokenizer, ...) may rebuild the pipeline from the vocabulary.
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
            **self.special_tokens,
        }
        if self.chat_template:
            config["chat_template"] = self.chat_template
        _write_json(d / "tokenizer_config.json", config)
        _write_json(d / "special_tokens_map.json", self.special_tokens)


# --- building a backend from a bare vocabulary ----------------------------------------------------


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are spelled in."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in keep)})
    return table


def build_byte_level_bpe(
    tokens: Sequence[str], merges: Sequence[tuple[str, str]], split_regex: str | None
) -> tokenizers.Tokenizer:
    """GPT-2 style BPE. `split_regex` runs before ByteLevel's own GPT-2 regex (None: only that)."""
    alphabet = byte_alphabet()
    chars = set(alphabet.values())
    vocab = {
        t if set(t) <= chars else "".join(alphabet[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    model = BPE(vocab, list(merges), continuing_subword_prefix="", end_of_word_suffix="")
    backend = tokenizers.Tokenizer(model)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split_regex is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split_regex), behavior="isolated"), byte_level]
        )
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    return backend


def build_sentencepiece_bpe(
    tokens: Sequence[str], merges: Sequence[tuple[str, str]], unk_token: str, *, gemma: bool
) -> tokenizers.Tokenizer:
    """SentencePiece BPE with byte fallback: Gemma's space->'▁' normalizer, or LLaMA's Metaspace."""
    vocab = {t: i for i, t in enumerate(tokens)}
    model = BPE(vocab, list(merges), unk_token=unk_token, fuse_unk=True, byte_fallback=True)
    backend = tokenizers.Tokenizer(model)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if gemma:
        backend.normalizer = normalizers.Replace(" ", "▁")
        backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="first", split=False)
        steps.append(decoders.Strip(" ", 1, 0))  # drop the space Metaspace prepended
    backend.decoder = decoders.Sequence(steps)
    return backend


def merges_from_ranking(tokens: Sequence[str], rank: Mapping[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a vocabulary, best-ranked merged token first.

    SentencePiece files store pieces and scores, not merges: every split of a piece into two pieces
    is a merge, ranked by the piece's score. Ties break exactly as transformers' `generate_merges`
    does (pair ids, then longer left / right piece first), so both produce the same ids.
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    found: list[tuple[str, str, float]] = []
    for piece, score in rank.items():
        local = [
            (piece[:k], piece[k:], score)
            for k in range(1, len(piece))
            if piece[:k] in vocab and piece[k:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        found.extend(local)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def add_vocab_tokens(
    backend: tokenizers.Tokenizer, control: Sequence[str], user_defined: Sequence[str]
) -> None:
    """Match control tokens (special) and user-defined tokens (not special) whole, never split."""
    if control:
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    if user_defined:
        backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user_defined])


def set_special_post_processor(
    backend: tokenizers.Tokenizer, bos: str | None, eos: str | None
) -> None:
    """What `encode(..., add_special_tokens=True)` adds around a sequence (BOS and / or EOS)."""
    pre = f"{bos}:0 " if bos else ""
    post = f" {eos}:0" if eos else ""
    pair = f"{pre}$A:0{post}{f' {bos}:1' if bos else ''} $B:1{f' {eos}:1' if eos else ''}"
    special = [(t, backend.token_to_id(t)) for t in dict.fromkeys(x for x in (bos, eos) if x)]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{pre}$A:0{post}", pair=pair, special_tokens=special
    )


# --- helpers --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _transformers_renderer() -> Callable[..., Any] | None:
    """transformers' chat-template renderer, or None where transformers is not installed (or
    predates the renderer as called here). Cached: importing transformers takes about a second."""
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:
        return None
    used = {"conversations", "tools", "documents", "chat_template", "continue_final_message"}
    if not used <= set(inspect.signature(render_jinja_template).parameters):
        return None
    return render_jinja_template


_CLOCK_LOCK = threading.Lock()


@contextlib.contextmanager
def _frozen_clock(when: datetime | None) -> Iterator[None]:
    """While rendering, transformers' `strftime_now` reads `when` instead of the wall clock.

    Its sandbox replaces any callable passed in as a template variable by a placeholder string,
    so the clock cannot be handed to the template; its `strftime_now` reads the `datetime` name
    of its module, which is swapped for the render (under a lock, as that name is shared)."""
    if when is None:
        yield
        return
    from transformers.utils import chat_template_utils as module

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:
            return when

    with _CLOCK_LOCK:
        wall, module.datetime = module.datetime, Frozen
        try:
            yield
        finally:
            module.datetime = wall


def _render_without_transformers(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool,
    continue_final_message: bool,
    template_time: datetime | None,
    kwargs: dict[str, Any],
) -> str:
    """The chat template rendered with our copy of transformers' jinja environment.

    Kept only for machines without transformers (a GGUF model needs no other dependency): it
    renders what transformers renders for the templates we ship and test, but not its extras.
    """
    if continue_final_message:
        raise ValueError("continue_final_message needs transformers (pip install transformers)")
    # As transformers: tools / documents are None (not undefined, which `is not none` passes).
    context = {"tools": None, "documents": None, **kwargs}
    if template_time is not None:
        context["strftime_now"] = template_time.strftime  # shadows the global clock
    return _compile(template).render(
        messages=[dict(m) for m in messages],
        add_generation_prompt=add_generation_prompt,
        **context,
    )


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    # Same environment as transformers: sandboxed, trim/lstrip blocks, loop controls, its globals
    # and its non-escaping `tojson`, so a template renders to the same string.
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant spans for masks; render the body.
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(
                lineno
            )

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _read_sentencepiece(path: Path) -> Any:
    """The ModelProto of a SentencePiece model file (pieces, scores, types, normalizer)."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise ImportError(
            f"{path}: a SentencePiece tokenizer.model needs the sentencepiece package "
            "(pip install sentencepiece protobuf)"
        ) from None
    data = path.read_bytes()
    try:
        return sentencepiece_model_pb2.ModelProto.FromString(data)
    except Exception as e:  # protobuf's DecodeError: not a SentencePiece model
        raise ValueError(f"{path}: not a SentencePiece model ({e})") from None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _token_text(value: Any) -> str | None:
    # Older configs serialise special tokens as AddedToken dicts.
    return value.get("content") if isinstance(value, dict) else value


def _pick_template(value: Any) -> str | None:
    # A list of named templates: the one named "default" is what apply_chat_template uses.
    if isinstance(value, list):
        named = {t["name"]: t["template"] for t in value}
        return named.get("default", next(iter(named.values()), None))
    return value


__all__ = [
    "Tokenizer",
    "END_OF_TURN_TOKENS",
    "FAMILY_CHAT_TEMPLATES",
    "GEMMA2_CHAT_TEMPLATE",
    "GEMMA3_CHAT_TEMPLATE",
    "add_vocab_tokens",
    "build_byte_level_bpe",
    "build_sentencepiece_bpe",
    "merges_from_ranking",
    "set_special_post_processor",
]
