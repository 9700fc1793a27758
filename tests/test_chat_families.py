"""Chat per family: Qwen3's thinking switch and <think> block, Gemma's default template."""

from __future__ import annotations

import pytest
from model_fixtures import tiny_config, tiny_tokenizer_json, tiny_weights

from edgelut import Model
from edgelut.models.chat_templates import GEMMA_TEMPLATE, end_of_turn_ids
from edgelut.models.config import TokenizerData
from edgelut.thinking import ThinkFilter, filter_stream, strip_thinking
from edgelut.tokenizer import Tokenizer, render_chat_template

# The shape of Qwen3's template where it matters here: enable_thinking=false writes an
# empty think block after the assistant header, so the model answers directly.
QWEN3_LIKE = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


@pytest.mark.parametrize(
    "pieces, want",
    [
        (["<think>\nplan</think>\n\nHello"], "Hello"),
        (["<th", "ink>a", "b</th", "ink>", "\n", "\nHi", " there"], "Hi there"),
        (["Answer: <", "b>bold</b>"], "Answer: <b>bold</b>"),  # a '<' that is no tag comes out
        (["no tags at all"], "no tags at all"),
        (["before<think>unfinished"], "before"),  # an unclosed block is dropped at the end
        (["x <think>", "1</think>y <think>2</think>z"], "x y z"),
    ],
)
def test_think_filter(pieces, want):
    assert "".join(filter_stream(pieces)) == want
    assert strip_thinking("".join(pieces)) == want


def test_think_filter_streams_without_delay_outside_tags():
    f = ThinkFilter()
    assert f.push("Hello ") == "Hello "
    assert f.push("wor<") == "wor"  # '<' may open a tag: held back
    assert f.push("ld") == "<ld"
    assert f.flush() == ""


def test_qwen3_chat_thinking_switch(monkeypatch):
    cfg = tiny_config("qwen3", tie_embeddings=True)
    tok = Tokenizer(TokenizerData(tiny_tokenizer_json(), chat_template=QWEN3_LIKE))
    m = Model.from_float(cfg, tiny_weights(cfg), tok, n_ctx=256, n_threads=1)
    msgs = [{"role": "user", "content": "hi"}]
    seen: list[list[int]] = []
    reply = "<think>\nLet me think.\n</think>\n\nHello!"

    def fake_run(ids, max_tokens, sampler, stop, stream):
        seen.append(ids)
        return iter([reply[:9], reply[9:20], reply[20:]]) if stream else reply

    monkeypatch.setattr(m, "_run", fake_run)
    assert m.chat(msgs, enable_thinking=False, temperature=0.0) == "Hello!"
    assert tok.decode(seen[-1]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert m.chat(msgs, temperature=0.0) == "Hello!"
    assert tok.decode(seen[-1]).endswith("<|im_start|>assistant\n")
    assert m.chat(msgs, temperature=0.0, show_thinking=True) == reply
    assert "".join(m.chat(msgs, temperature=0.0, stream=True)) == "Hello!"


def test_qwen3_chat_runs_end_to_end():
    cfg = tiny_config("qwen3", tie_embeddings=True)
    tok = Tokenizer(TokenizerData(tiny_tokenizer_json(), chat_template=QWEN3_LIKE))
    m = Model.from_float(cfg, tiny_weights(cfg), tok, n_ctx=256, n_threads=1)
    out = m.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0, enable_thinking=False)
    assert isinstance(out, str) and m.stats.completion_tokens >= 1


def test_gemma_template():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    text = render_chat_template(GEMMA_TEMPLATE, msgs, add_generation_prompt=True, bos_token="<bos>")
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    from edgelut.tokenizer import TemplateError

    with pytest.raises(TemplateError, match="not tool"):
        render_chat_template(GEMMA_TEMPLATE, [{"role": "tool", "content": "x"}])


def test_end_of_turn_ids():
    assert end_of_turn_ids(["<pad>", "<eos>", "a", "<end_of_turn>", "<|im_end|>"]) == [3, 4]


def test_cli_chat_thinking_flags(tmp_path):
    import subprocess
    import sys

    from model_fixtures import write_gguf

    from edgelut.models.importers import load_model
    from edgelut.quantize.convert import convert
    from edgelut.quantize.recipe import Recipe

    cfg = tiny_config("qwen3", tie_embeddings=True)
    model = load_model(write_gguf(tmp_path / "q3.gguf", cfg, tiny_weights(cfg)))
    model.tokenizer.chat_template = QWEN3_LIKE
    recipe = Recipe(method="rtn", qtype="q4", group_size=32)
    path = convert(model, tmp_path / "q3.elut", recipe, progress=False)

    def chat(*flags: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "edgelut.cli", "chat", str(path), "-n", "4", "--temp", "0", *flags]
        return subprocess.run(cmd, input="hi\n", capture_output=True, text=True, timeout=120)

    r = chat("--no-think", "--show-thinking")
    assert r.returncode == 0, r.stderr
    r = chat("--think", "--no-think")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
