"""Real Python clients against `dsrs-local serve`: the `openai` package
(plain, streaming, `response_format`, tools: a required call, and the own
model's lookup round trip when DSRS_TOOL_CASE gives its question) and Python
DSPy programs (ChatAdapter and JSONAdapter) whose replies must parse.

Run by the Rust suite (tests/suite/python_clients.rs), which starts the
server and passes its URL:  python clients.py BASE_URL MODEL API_KEY
Prints one line per check; exits non-zero on the first failure.
"""

import json
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import

import dspy
import openai

BASE, MODEL, KEY = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=BASE, api_key=KEY)


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {name}", flush=True)


# --- the openai client ---
reply = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=16,
    temperature=0,
)
text = reply.choices[0].message.content
check("plain chat", isinstance(text, str) and reply.usage.total_tokens > 0, reply)

pieces = []
usage = None
for chunk in client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=16,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
check("streaming adds up to the whole reply", "".join(pieces) == text, ("".join(pieces), text))
check("streaming reports usage", usage is not None and usage.total_tokens == reply.usage.total_tokens, usage)

schema = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
reply = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "The largest city of Japan, as JSON."}],
    max_tokens=120,
    response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
)
value = json.loads(reply.choices[0].message.content)
check("response_format json_schema", isinstance(value["city"], str) and isinstance(value["population"], int), value)

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    check("unknown model is an error", False, "no error")
except openai.NotFoundError as error:
    check("unknown model is a 404", "does not exist" in str(error), error)

# --- tools ---
tools = [
    {
        "type": "function",
        "function": {
            "name": "lookup_code",
            "description": "Looks up the code of an item.",
            "parameters": {
                "type": "object",
                "properties": {"item": {"type": "string"}},
                "required": ["item"],
            },
        },
    }
]
question = {"role": "user", "content": "What is the code of the red lamp?"}
reply = client.chat.completions.create(
    model=MODEL, messages=[question], tools=tools, tool_choice="required", temperature=0
)
calls = reply.choices[0].message.tool_calls
check(
    "tools: a required call comes back as tool_calls",
    reply.choices[0].finish_reason == "tool_calls" and calls and calls[0].function.name == "lookup_code",
    reply,
)
arguments = json.loads(calls[0].function.arguments)
check("tools: its arguments fit the schema", isinstance(arguments.get("item"), str), arguments)

streamed = {}
for chunk in client.chat.completions.create(
    model=MODEL, messages=[question], tools=tools, tool_choice="required", temperature=0, stream=True
):
    for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        entry = streamed.setdefault(call.index, {"name": "", "arguments": ""})
        entry["name"] += call.function.name or ""
        entry["arguments"] += call.function.arguments or ""
check(
    "tools: a streamed call adds up to the same call",
    streamed.get(0) == {"name": "lookup_code", "arguments": calls[0].function.arguments},
    streamed,
)

follow_up = client.chat.completions.create(
    model=MODEL,
    messages=[
        question,
        reply.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "417"},
    ],
    tools=tools,
    temperature=0,
    max_tokens=40,
)
message = follow_up.choices[0].message
check(
    "tools: the tool's result is taken and answered",
    isinstance(message.content, str) or bool(message.tool_calls),
    follow_up,
)

# The own model's tool family: it calls the tool with the question's item
# by itself (`tool_choice` left out) and answers with the tool's result.
case = json.loads(os.environ.get("DSRS_TOOL_CASE", "null"))
if case:
    reply = client.chat.completions.create(
        model=MODEL, messages=case["messages"], tools=case["tools"], temperature=0
    )
    calls = reply.choices[0].message.tool_calls or []
    called = json.loads(calls[0].function.arguments) if calls else {}
    check("tools: the own model calls with the item", called == {"item": case["item"]}, reply)
    answer = client.chat.completions.create(
        model=MODEL,
        messages=case["messages"]
        + [
            reply.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": calls[0].id, "content": str(case["code"])},
        ],
        tools=case["tools"],
        temperature=0,
    )
    content = answer.choices[0].message.content or ""
    check(
        "tools: and answers with the result",
        f"[[ ## code ## ]]\n{case['code']}\n" in content,
        content,
    )

# --- Python DSPy ---
lm = dspy.LM(
    f"openai/{MODEL}", api_base=BASE, api_key=KEY, temperature=0.0, max_tokens=200, cache=False
)


class Capital(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


class Sum(dspy.Signature):
    """Add the numbers."""

    a: int = dspy.InputField()
    b: int = dspy.InputField()
    total: int = dspy.OutputField()
    steps: list[str] = dspy.OutputField()


for adapter in (dspy.ChatAdapter(), dspy.JSONAdapter()):
    name = type(adapter).__name__
    dspy.configure(lm=lm, adapter=adapter)
    answer = dspy.Predict(Capital)(question="What is the capital of France?").answer
    check(f"DSPy {name}: text field parses", isinstance(answer, str), answer)
    result = dspy.Predict(Sum)(a=2, b=3)
    check(
        f"DSPy {name}: typed fields parse",
        isinstance(result.total, int) and isinstance(result.steps, list),
        result,
    )
    print(f"     {name} answered {answer!r}, total {result.total}", flush=True)

print("all checks passed", flush=True)
