"""Time of one blocklist check against a full list: the cached compiled list, and the old per-prompt recompile.

    .venv/bin/python -m bench.bench_moderation [--terms 500] [--checks 2000] [--seed 1]

A server's list of `--terms` terms (the default is the cap, BLOCKLIST_MAX_TERMS): four in five plain words
or phrases (English and Korean), one in five RE2 regexes. Prompts are a typical 100-character prompt, a
1,500-character one (MAX_PROMPT_LENGTH) and a Korean one, none blocked, so every term is tried. Printed:

* `Blocklist.matches`: the match itself on the cached compiled list;
* `Moderator.check`: what /imagine pays per prompt, the store's one-row version read included (SQLite file);
* the list's compile time, paid once per change of the list;
* the old check: every term compiled for every prompt (Python `re` for words, whose own cache of 512
  patterns helps small lists only, RE2 for regexes), as the bot did before.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import re2

from bot.moderation.blocklist import Blocklist, Moderator
from bot.store.records import BlockedTerm
from bot.store.sqlite import SqliteStore

GUILD_ID = 1
_SYLLABLES = "가나다라마바사아자차카타파하고양이그림"


def _word(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 10)))


def make_terms(count: int, rng: random.Random) -> list[BlockedTerm]:
    terms = []
    for i in range(count):
        if i % 5 == 4:
            pattern, is_regex = f"{_word(rng)}[0-9]+(?:{_word(rng)}|{_word(rng)})", True
        else:
            pattern, is_regex = " ".join(_word(rng) for _ in range(rng.randint(1, 3))), False
        terms.append(
            BlockedTerm(id=i + 1, guild_id=GUILD_ID, pattern=pattern, is_regex=is_regex, created_by=0, created_at=0)
        )
    return terms


def make_prompts(rng: random.Random) -> dict[str, str]:
    def words(limit: int) -> str:
        text = ""
        while len(text) < limit:
            text += "zq" + _word(rng) + " "  # "zq" keeps every word off the list
        return text[:limit]

    korean = ("귀여운 고양이들이 그려진 " * 80)[:1500]
    return {"typical (100 chars)": words(100), "long (1500 chars)": words(1500), "korean (1500 chars)": korean}


# --- the check as it was before the cache (bot/moderation/blocklist.py before issue 8) ----------------------------


def _old_compile(pattern: str, is_regex: bool) -> object:
    if not is_regex:
        words = r"\s+".join(re.escape(word) for word in pattern.split())
        return re.compile(r"(?<!\w)" + words + r"(?!\w)", re.IGNORECASE)
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = 1 << 20
    return re2.compile(pattern, options)


def old_find_blocked(prompt: str, terms: list[BlockedTerm]) -> BlockedTerm | None:
    for term in terms:
        if _old_compile(term.pattern, term.is_regex).search(prompt):  # type: ignore[attr-defined]
            return term
    return None


# --- timing -----------------------------------------------------------------------------------------------


def per_call_ms(call: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, p99) of one call, in ms."""
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    times.sort()
    return statistics.median(times) * 1000, times[min(len(times) - 1, int(len(times) * 0.99))] * 1000


async def run(term_count: int, checks: int, seed: int) -> None:
    rng = random.Random(seed)
    terms = make_terms(term_count, rng)
    prompts = make_prompts(rng)
    started = time.perf_counter()
    blocklist = Blocklist.compile(terms)
    compile_ms = (time.perf_counter() - started) * 1000
    print(f"terms={term_count} ({sum(t.is_regex for t in terms)} regexes)  programs={len(blocklist.parts)}")
    print(f"compile the list (once per change): {compile_ms:.1f} ms")
    for name, prompt in prompts.items():
        assert not blocklist.matches(prompt) and old_find_blocked(prompt, terms) is None
        med, p99 = per_call_ms(lambda p=prompt: blocklist.matches(p), checks)
        print(f"  {name:<20} Blocklist.matches      median {med:8.4f} ms   p99 {p99:8.4f} ms")

    with tempfile.TemporaryDirectory() as tmp:
        async with SqliteStore(str(Path(tmp) / "bench.db")) as store:
            for term in terms:
                await store.add_blocked_term(GUILD_ID, term.pattern, term.is_regex, actor_id=0, now=0.0)
            moderator = Moderator(store)
            for name, prompt in prompts.items():
                await moderator.check(GUILD_ID, prompt)
                times = []
                for _ in range(checks):
                    t0 = time.perf_counter()
                    await moderator.check(GUILD_ID, prompt)
                    times.append(time.perf_counter() - t0)
                times.sort()
                med, p99 = statistics.median(times) * 1000, times[int(len(times) * 0.99)] * 1000
                print(f"  {name:<20} Moderator.check        median {med:8.4f} ms   p99 {p99:8.4f} ms  (+ version read)")

    old_runs = max(5, min(50, checks // 40))
    for name, prompt in prompts.items():
        med, p99 = per_call_ms(lambda p=prompt: old_find_blocked(p, terms), old_runs)
        print(f"  {name:<20} old recompile per prompt median {med:8.2f} ms   p99 {p99:8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--terms", type=int, default=500)
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(run(args.terms, args.checks, args.seed))


if __name__ == "__main__":
    main()
