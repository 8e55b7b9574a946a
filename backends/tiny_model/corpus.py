"""The embedded text the tiny tokenizer's BPE merges are learned from.

A few KB of English prose, chat-style exchanges, Python/JSON/shell snippets and a sprinkle of
non-ASCII text (accented Latin, Greek, Cyrillic, CJK, emoji). The goal is a vocabulary that splits
ordinary prompts into plausible sub-words; the content itself carries no meaning for the model.

Changing this text changes the vocabulary, and therefore every generated model: bump
``GENERATOR_VERSION`` in ``backends/tiny_model/__init__.py`` when you edit it.
"""

from __future__ import annotations

_PROSE = """\
The quick brown fox jumps over the lazy dog. The dog was not amused, and the fox ran into the woods.
Once upon a time, in a small village by the sea, there lived an old fisherman and his daughter.
Every morning they would walk down to the harbor, check the nets, and talk about the weather.
"It is going to rain today," she said, looking at the grey clouds over the water.
"Then we should finish early," he answered, and they both laughed because it always rained.
The history of computing is a story of people who wanted machines to do the boring work for them.
Early computers filled entire rooms, consumed enormous amounts of power, and were programmed by hand.
Today a phone in your pocket is thousands of times faster than those machines, and it fits in one hand.
Language models read text as a sequence of tokens. A token can be a word, a piece of a word, or a byte.
The model predicts the next token, appends it to the input, and repeats the process until it stops.
Good software is written for people first and for computers second; clear names beat clever tricks.
When you are not sure what a function does, read the tests, and if there are no tests, write some.
Please summarize the following article in three sentences. Translate this paragraph into French.
What is the capital of France? The capital of France is Paris. What is two plus two? It is four.
Write a short poem about the ocean. Explain how a hash table works. List five facts about the moon.
The server received the request, validated the parameters, and returned a response with status 200.
If the queue is full, the scheduler waits until a slot becomes free, then admits the next request.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 42 100 256 1024 2048 4096 65536 3.14159 2.71828 1e-5 -7 +3
Dates and times: 2024-01-15, 12:30:45, March 3rd, 1999; version 1.2.3; 50% off; $19.99; #1 (best).
"""

_CHAT = """\
system: You are a helpful assistant. Answer briefly and politely.
user: Hello! Who are you?
assistant: Hello! I am a small assistant. How can I help you today?
user: Can you tell me a joke about programmers?
assistant: Why do programmers prefer dark mode? Because light attracts bugs.
user: Thanks, that was funny. What should I cook for dinner tonight?
assistant: How about a simple pasta with tomatoes, garlic, olive oil and fresh basil?
user: Sounds good. How long does it take?
assistant: About twenty minutes from start to finish, including the time to boil the water.
"""

_CODE = '''\
def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    result = []
    a, b = 0, 1
    for _ in range(n):
        result.append(a)
        a, b = b, a + b
    return result


class Request:
    def __init__(self, prompt: str, max_tokens: int = 16) -> None:
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.tokens: list[int] = []

    def is_finished(self) -> bool:
        return len(self.tokens) >= self.max_tokens


if __name__ == "__main__":
    import json
    import sys

    data = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    print(json.dumps(data, indent=2))
    for line in sys.stdin:
        if not line.strip():
            continue
        print(line.rstrip("\\n"))

async def stream(client, url):
    async with client.stream("POST", url, json={"max_tokens": 32, "temperature": 0.0}) as response:
        async for chunk in response.aiter_lines():
            if chunk.startswith("data: "):
                yield chunk[6:]

// JavaScript and C style
function add(a, b) { return a + b; }
const items = [1, 2, 3].map((x) => x * 2);
int main(int argc, char **argv) { printf("hello, world\\n"); return 0; }

$ curl -s http://localhost:8000/v1/models | jq .
$ pip install -e ".[dev]" && pytest -q tests/
{"id": "chatcmpl-123", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop"}]}
<html><body><p class="note">Hello &amp; welcome!</p></body></html>
SELECT id, name FROM users WHERE age > 18 ORDER BY name;
\tindented\twith\ttabs
    four spaces,   three spaces,  two spaces.
'''

_UNICODE = """\
Café, naïve, façade, résumé, jalapeño, Zürich, São Paulo, Kraków, Ærøskøbing, déjà vu, über.
El niño comió una manzana. ¿Dónde está la biblioteca? ¡Qué día tan bonito!
Der Bär läuft über die Straße. Ça va très bien, merci. Smörgåsbord och kött.
Ελληνικά: Καλημέρα κόσμε. Русский: Привет, мир! Как дела? Україна, Київ.
日本語: こんにちは世界。今日はいい天気ですね。東京、大阪、京都。
中文: 你好，世界！我们今天学习机器学习和自然语言处理。
한국어: 안녕하세요, 세계! 감사합니다.
Emoji: 👋 🙂 😂 ❤️ 👍 🎉 🚀 ✨ 🔥 🐍 🦀 👨‍👩‍👧‍👦 👩🏽‍💻 🏳️‍🌈 ✅ ❌ → ← ≤ ≥ ≠ ∞ π ° € £ ¥ © ™ …
Math: α + β = γ, ∑ xᵢ², √2 ≈ 1.414, ∫ f(x) dx, ∀ x ∈ ℝ.
"""

CORPUS: str = _PROSE + _CHAT + _CODE + _UNICODE
