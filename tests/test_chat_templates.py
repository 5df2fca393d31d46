# ruff: noqa: E501  (the Llama templates below are verbatim, long lines and all)
"""Chat templates: transformers' renderer (what `Tokenizer.apply_chat_template` uses when
transformers is installed) and our fallback (used without it) agree token for token on every
template we ship or know: SmolLM2's from the shipped GGUF file, the Gemma 2 and Gemma 3 formats
`tpt_jax.tokenizer` knows (the shipped Gemma 3 GGUF carries none) on the shipped Gemma 3 tokenizer,
and Meta's Llama 3.1 and 3.2 templates. transformers' path also equals transformers' own
tokenizer API, and renders what the fallback cannot (tools as functions, continue_final_message).
"""

import re
import subprocess
import sys
from datetime import datetime

import jinja2
import pytest
import transformers
from transformers.utils import chat_template_utils

from tpt_jax import tokenizer as tokenizer_module
from tpt_jax.tokenizer import GEMMA2_CHAT_TEMPLATE, GEMMA3_CHAT_TEMPLATE, Tokenizer

# meta-llama/Llama-3.1-8B-Instruct (and 3.3) tokenizer_config.json, verbatim
LLAMA31_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# meta-llama/Llama-3.2-1B-Instruct tokenizer_config.json, verbatim: today's date via strftime_now
LLAMA32_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# template name -> (the tokenizer it renders for, the template; None: the GGUF file's own)
TEMPLATES = {
    "smollm2": ("smollm2", None),
    "gemma2": ("gemma3", GEMMA2_CHAT_TEMPLATE),
    "gemma3": ("gemma3", GEMMA3_CHAT_TEMPLATE),
    "llama3.1": ("smollm2", LLAMA31_TEMPLATE),
    "llama3.2": ("smollm2", LLAMA32_TEMPLATE),
}
GENERATION_PROMPTS = {
    "smollm2": "<|im_start|>assistant\n",
    "gemma2": "<start_of_turn>model\n",
    "gemma3": "<start_of_turn>model\n",
    "llama3.1": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama3.2": "<|start_header_id|>assistant<|end_header_id|>\n\n",
}

SYSTEM = {"role": "system", "content": "You are a careful math tutor. Show your work."}
Q1 = {"role": "user", "content": "A farmer has 17 sheep and buys 3 more. How many now?"}
A1 = {"role": "assistant", "content": "17 + 3 = 20.\n#### 20"}
Q2 = {"role": "user", "content": "  Betty spends 37.5% of $1,080 in Zürich → 日本 😀. Left?\n\n"}
A2 = {"role": "assistant", "content": "1,080 - 405 = 675\n#### 675  "}
Q3 = {"role": "user", "content": "Weng earns $12 an hour for 50 minutes. How much?"}
CHATS = {
    "system_user": [SYSTEM, Q1],
    "user": [Q1],
    "multi_turn": [SYSTEM, Q1, A1, Q2],
    "few_shot": [Q1, A1, Q2, A2, Q3],
    "ends_with_answer": [Q1, A1],
}
WHEN = datetime(2025, 3, 9, 8, 30)  # a run's clock
TOOL = {
    "type": "function",
    "function": {
        "name": "multiply",
        "description": "Multiply two numbers.",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "number", "description": "The first factor."},
                "b": {"type": "number", "description": "The second factor."},
            },
            "required": ["a", "b"],
        },
    },
}


def multiply(a: float, b: float):  # no return type: the schema above has none
    """Multiply two numbers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    from tpt_jax.gguf_io import find_smollm2_gguf, read_gguf_tokenizer

    return read_gguf_tokenizer(find_smollm2_gguf())


@pytest.fixture(scope="module")
def gemma3() -> Tokenizer:
    from tpt_jax.gguf_io import find_gemma3_270m_gguf, read_gguf_tokenizer

    return read_gguf_tokenizer(find_gemma3_270m_gguf())


def templated(request: pytest.FixtureRequest, name: str) -> Tokenizer:
    """A tokenizer with template `name` on the run clock `WHEN`."""
    fixture, template = TEMPLATES[name]
    base = request.getfixturevalue(fixture)
    tok = Tokenizer(
        base.backend, chat_template=template or base.chat_template, **base.special_tokens
    )
    tok.template_time = WHEN
    return tok


def rendered(tok: Tokenizer, messages, monkeypatch, *, fallback: bool, **kwargs):
    """(text, ids) by one renderer, or the (type, message) of the template's error."""
    with monkeypatch.context() as patch:
        if fallback:
            patch.setattr(tokenizer_module, "_transformers_renderer", lambda: None)
        try:
            text = tok.apply_chat_template(messages, tokenize=False, **kwargs)
            ids = tok.apply_chat_template(messages, **kwargs)
        except jinja2.TemplateError as e:
            return type(e).__name__, str(e)
    return text, ids


def test_transformers_renders_when_installed() -> None:
    assert tokenizer_module._transformers_renderer() is chat_template_utils.render_jinja_template


@pytest.mark.parametrize("generation_prompt", [True, False], ids=["prompt", "no_prompt"])
@pytest.mark.parametrize("chat", sorted(CHATS))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_renderers_agree_token_for_token(request, monkeypatch, name, chat, generation_prompt):
    tok = templated(request, name)
    messages = CHATS[chat]
    kwargs = {"add_generation_prompt": generation_prompt}
    ours = rendered(tok, messages, monkeypatch, fallback=False, **kwargs)
    assert ours == rendered(tok, messages, monkeypatch, fallback=True, **kwargs)
    text, ids = ours
    if name == "gemma2" and messages[0]["role"] == "system":
        assert ours == ("TemplateError", "System role not supported")
        return
    assert isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)
    assert text.endswith(GENERATION_PROMPTS[name]) == generation_prompt
    if name == "llama3.2":  # the run's clock, not the wall clock
        assert "Today Date: 09 Mar 2025\n" in text
    assert chat_template_utils.datetime is datetime  # the clock is put back


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_transformers_path_equals_transformers_tokenizer(request, name) -> None:
    """What we render through transformers is what its own tokenizer API renders (ids
    included), with `date_string` given so that Llama 3.2 reads no clock."""
    tok = templated(request, name)
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok.backend, chat_template=tok.chat_template, **tok.special_tokens
    )
    for messages in CHATS.values():
        for prompt in (True, False):
            try:
                expected = ref.apply_chat_template(
                    messages, add_generation_prompt=prompt, return_dict=False, date_string="x"
                )
            except jinja2.TemplateError as e:
                with pytest.raises(jinja2.TemplateError, match=re.escape(str(e))):
                    tok.apply_chat_template(messages, add_generation_prompt=prompt)
                continue
            got = tok.apply_chat_template(messages, add_generation_prompt=prompt, date_string="x")
            assert got == list(expected)


@pytest.mark.parametrize("name", ["llama3.1", "llama3.2"])
def test_tools_render_alike_and_functions_need_transformers(request, monkeypatch, name) -> None:
    tok = templated(request, name)
    chat = [SYSTEM, Q1]
    ours = rendered(tok, chat, monkeypatch, fallback=False, tools=[TOOL])
    assert ours == rendered(tok, chat, monkeypatch, fallback=True, tools=[TOOL])
    assert '"name": "multiply"' in ours[0] and "Environment: ipython" in ours[0]
    # transformers turns a Python function into its JSON schema; the fallback cannot
    assert tok.apply_chat_template(chat, tokenize=False, tools=[multiply]) == ours[0]


def test_continue_final_message_needs_transformers(request, monkeypatch) -> None:
    tok = templated(request, "smollm2")
    chat = [SYSTEM, Q1, {"role": "assistant", "content": "Step 1: 17 + 3"}]
    text = tok.apply_chat_template(chat, tokenize=False, continue_final_message=True)
    assert text.endswith("<|im_start|>assistant\nStep 1: 17 + 3")
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok.backend, chat_template=tok.chat_template, **tok.special_tokens
    )
    assert tok.apply_chat_template(chat, continue_final_message=True) == list(
        ref.apply_chat_template(chat, continue_final_message=True, return_dict=False)
    )
    assert chat[-1]["content"] == "Step 1: 17 + 3"  # the caller's messages are left alone
    monkeypatch.setattr(tokenizer_module, "_transformers_renderer", lambda: None)
    with pytest.raises(ValueError, match="needs transformers"):
        tok.apply_chat_template(chat, continue_final_message=True)


def test_without_transformers_the_fallback_renders(smollm2) -> None:
    """A process that cannot import transformers renders SmolLM2's template with the fallback
    and never imports it (nor torch)."""
    code = (
        "import sys; sys.modules['transformers'] = None; sys.modules['torch'] = None\n"
        "from tpt_jax.gguf_io import find_smollm2_gguf, read_gguf_tokenizer\n"
        "tok = read_gguf_tokenizer(find_smollm2_gguf())\n"
        f"print(tok.apply_chat_template({CHATS['multi_turn']!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(smollm2.apply_chat_template(CHATS["multi_turn"]))
