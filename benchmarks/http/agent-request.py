#!/usr/bin/env python3
# Writes benchmarks/http/agent-request.json: a chat request the size and shape of a coding agent's step (~55 KB) — an
# 8 KB system prompt, 16 tools with JSON-schema parameters, ten tool-calling turns (a user message, an assistant tool
# call, the tool's result) and a last user message. Deterministic (fixed seed): the committed file is this script's output.
# Used by post-agent.lua and post-agent-step.lua (docs/benchmarks.md, "Token limits on agent-sized requests").
import json, random, os
random.seed(7)
words = ("the a file function return value test build error module import class method string number list object "
         "request response server client cache token limit model provider route stream event chunk header status code "
         "line path directory config option default parse write read open close async await task thread queue channel "
         "lock timer deadline retry fallback health metric cost budget key user admin").split()
def text(n):
    out = []
    while sum(len(w) + 1 for w in out) < n:
        out.append(random.choice(words))
    return " ".join(out)
system = "You are a coding agent. " + text(8000)
tools = []
for i in range(16):
    props = {f"arg{j}": {"type": random.choice(["string", "integer", "boolean"]), "description": text(120)} for j in range(6)}
    tools.append({"type": "function", "function": {"name": f"tool_{i}", "description": text(300),
                  "parameters": {"type": "object", "properties": props, "required": ["arg0"]}}})
messages = [{"role": "system", "content": system}]
for t in range(10):
    messages.append({"role": "user", "content": text(600)})
    call = f"call_{t:04d}abcdefghijklmnop"
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": call, "type": "function", "function": {"name": f"tool_{t}", "arguments": json.dumps({"arg0": text(200)})}}]})
    messages.append({"role": "tool", "tool_call_id": call, "content": text(1200)})
messages.append({"role": "user", "content": "Now fix the failing test. " + text(300)})
body = {"model": "gpt-4o-mini", "messages": messages, "tools": tools, "max_tokens": 16}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "agent-request.json"), "w") as f:
    f.write(json.dumps(body))
