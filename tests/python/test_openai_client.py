#!/usr/bin/env python3
"""The official `openai` Python client, unmodified, against `infer-cli serve`.

Starts the server on a free port with the tiny fixture model, then: chat, streamed chat with
usage, text completions (text and token-id prompts), models, and a bad request raising
openai.BadRequestError; finally SIGTERM must stop the server with exit code 0.

    python3 tests/python/test_openai_client.py [--cli target/debug/infer-cli] [--model DIR]
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start(cli, model):
    proc = subprocess.Popen(
        [cli, "serve", "--model", model, "--port", "0", "--no-progress", "--context-length", "1024",
         "--served-model-name", "tiny"],
        stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"http://(\S+?):(\d+)", line)
        if m:
            return proc, f"http://{m.group(1)}:{m.group(2)}/v1"
    proc.kill()
    raise SystemExit("the server did not print its address")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", default=os.path.join(ROOT, "target/debug/infer-cli"))
    ap.add_argument("--model", default=os.path.join(ROOT, "tests/fixtures/tiny-llama3"))
    args = ap.parse_args()
    proc, base = start(args.cli, args.model)
    passed, failed = 0, 0

    def check(name, fn):
        nonlocal passed, failed
        try:
            fn()
            passed += 1
            print(f"ok   {name}")
        except Exception as e:  # report every failure, then exit non-zero
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")

    client = openai.OpenAI(base_url=base, api_key="unused", timeout=60, max_retries=0)
    msgs = [{"role": "user", "content": "Hello, how are you?"}]

    def chat():
        r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0,
                                           extra_body={"ignore_eos": True})
        assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
        assert r.choices[0].message.role == "assistant"
        assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content
        assert r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens == 8
        assert r.usage.total_tokens == r.usage.prompt_tokens + 8
        chat.text = r.choices[0].message.content

    def chat_stream():
        s = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0, stream=True,
                                           stream_options={"include_usage": True},
                                           extra_body={"ignore_eos": True})
        text, reasons, usage = "", [], None
        for chunk in s:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.delta.content or ""
                if c.finish_reason:
                    reasons.append(c.finish_reason)
        assert text == chat.text, (text, chat.text)
        assert reasons == ["length"]
        assert usage is not None and usage.completion_tokens == 8

    def chat_logprobs():
        r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=4, temperature=0, logprobs=True,
                                           top_logprobs=2)
        content = r.choices[0].logprobs.content
        assert len(content) == r.usage.completion_tokens
        assert all(len(t.top_logprobs) == 2 for t in content)

    def completions():
        r = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert r.object == "text_completion" and r.choices[0].text
        ids = client.completions.create(model="tiny", prompt=[128000, 791, 6864, 315, 9822, 374], max_tokens=6,
                                        temperature=0, extra_body={"ignore_eos": True})
        assert ids.choices[0].text == r.choices[0].text
        s = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6, temperature=0,
                                      stream=True, extra_body={"ignore_eos": True})
        assert "".join(c.choices[0].text for c in s if c.choices) == r.choices[0].text

    def models():
        assert [m.id for m in client.models.list().data] == ["tiny"]

    def bad_request():
        try:
            client.chat.completions.create(model="tiny", messages=[], max_tokens=4)
        except openai.BadRequestError as e:
            assert e.status_code == 400 and "messages" in str(e)
        else:
            raise AssertionError("no BadRequestError")
        try:
            client.chat.completions.create(model="tiny", messages=msgs, max_tokens=-1)
        except openai.BadRequestError as e:
            assert e.body["param"] == "max_tokens", e.body
        else:
            raise AssertionError("no BadRequestError")
        try:
            client.chat.completions.create(model="nope", messages=msgs, max_tokens=2)
        except openai.NotFoundError:
            pass
        else:
            raise AssertionError("no NotFoundError")

    for name, fn in [("chat", chat), ("chat_stream", chat_stream), ("chat_logprobs", chat_logprobs),
                     ("completions", completions), ("models", models), ("bad_request", bad_request)]:
        check(name, fn)

    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = "timeout"
    if code == 0:
        passed += 1
        print("ok   sigterm_exit_0")
    else:
        failed += 1
        print(f"FAIL sigterm_exit_0: exit {code}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
