"""Chat conventions per family: a default template when the model file has none, end-of-turn tokens.

llama.cpp's Gemma 3 GGUFs carry no ``tokenizer.chat_template``; without one
``Model.chat`` could not run. The template below is edgelut's own rendering of
Gemma's documented turn format (``<start_of_turn>user`` ... ``<end_of_turn>``,
the assistant's role named ``model``, no system role: a system message is put
at the top of the first user turn). A template shipped with the model always
wins over these.
"""

from __future__ import annotations

GEMMA_TEMPLATE = """\
{%- set ns = namespace(system='') -%}
{{- bos_token -}}
{%- for message in messages -%}
  {%- if message['role'] == 'system' -%}
    {%- set ns.system = ns.system + (message['content'] | trim) + '\\n\\n' -%}
  {%- elif message['role'] in ('user', 'assistant') -%}
    {{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' -}}
    {%- if message['role'] == 'user' -%}{{- ns.system -}}{%- set ns.system = '' -%}{%- endif -%}
    {{- (message['content'] | trim) + '<end_of_turn>\\n' -}}
  {%- else -%}
    {{- raise_exception('Gemma has the roles system, user and assistant, not ' + message['role']) -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}
"""

# Architecture -> template used when the model carries none.
DEFAULT_TEMPLATES: dict[str, str] = {"gemma3": GEMMA_TEMPLATE}

# Tokens that end an assistant turn, besides the model's EOS (llama.cpp counts
# them as end-of-generation by their text too).
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>")


def end_of_turn_ids(tokens: list[str] | tuple[str, ...]) -> list[int]:
    """Ids of the end-of-turn tokens present in a vocabulary."""
    index = {t: i for i, t in enumerate(tokens) if t in END_OF_TURN_TOKENS}
    return sorted(index.values())


__all__ = ["DEFAULT_TEMPLATES", "END_OF_TURN_TOKENS", "GEMMA_TEMPLATE", "end_of_turn_ids"]
