"""The offline default's data: a small generated language with hidden semantics.

No model hub here, so the built-in example must still be a real learning
problem. Sentences describe animals acting on each other; whether a sentence is
*plausible* depends on hidden attributes of the words (size, diet) and on word
order (who acts on whom), so a bag of words cannot solve it.

- corpus: plausible sentences (the "Wikipedia" of this world);
- target task: plausible vs implausible sentences (implausible ones swap roles
  or pick a violating pair), a binary classification;
- intermediate task (STILTs real/fake, Chang & Lu 2021): the first half of a
  corpus sentence, its real ending and fake endings from an n-gram generator
  fitted on the corpus (locally fluent, globally incoherent, like GPT-2 fakes).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

# name -> (size 1..5, carnivore)
ANIMALS: dict[str, tuple[int, bool]] = {
    "mouse": (1, False), "frog": (1, True), "rabbit": (2, False), "cat": (2, True),
    "hen": (2, False), "fox": (3, True), "deer": (3, False), "goat": (3, False),
    "wolf": (4, True), "horse": (4, False), "lion": (5, True), "bear": (5, True),
}
PLANTS = ["grass", "berries", "apples", "leaves", "roots"]
COLORS = ["brown", "white", "grey", "black", "red", "spotted"]
PLACES = ["near the river", "in the forest", "on the hill", "at night", "in the field",
          "by the lake", "after the rain", "before dawn"]
# verb -> rule on (subject, object)
VERBS = ["chases", "fears", "eats", "hunts", "avoids"]


def plausible(verb: str, subj: str, obj: str) -> bool:
    """The hidden semantics a model has to discover."""
    s_size, s_carn = ANIMALS[subj]
    if obj in PLANTS:
        return verb == "eats" and not s_carn
    o_size, o_carn = ANIMALS[obj]
    if verb in ("chases", "hunts", "eats"):
        return s_carn and s_size > o_size
    if verb in ("fears", "avoids"):
        return o_carn and o_size > s_size
    raise ValueError(verb)


@dataclass(frozen=True)
class Sentence:
    subj: str
    verb: str
    obj: str
    c1: str
    c2: str
    place: str

    def text(self) -> str:
        obj = self.obj if self.obj in PLANTS else f"{self.c2} {self.obj}"
        return f"the {self.c1} {self.subj} {self.verb} the {obj} {self.place}"


def _random_sentence(rng: random.Random) -> Sentence:
    verb = rng.choice(VERBS)
    subj = rng.choice(list(ANIMALS))
    objs = list(ANIMALS) + (PLANTS if verb == "eats" else [])
    obj = rng.choice([o for o in objs if o != subj])
    return Sentence(subj, verb, obj, rng.choice(COLORS), rng.choice(COLORS), rng.choice(PLACES))


def sample_sentence(rng: random.Random, want_plausible: bool) -> Sentence:
    while True:
        s = _random_sentence(rng)
        if plausible(s.verb, s.subj, s.obj) == want_plausible:
            return s


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [sample_sentence(rng, True).text() for _ in range(n)]


def target_examples(n: int, seed: int) -> list[dict]:
    """Balanced plausible (1) / implausible (0) sentences; half the negatives are
    role swaps of a plausible sentence, so word order matters."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        s = sample_sentence(rng, True)
        if not label:
            swapped = Sentence(s.obj, s.verb, s.subj, s.c2, s.c1, s.place)
            if s.obj not in PLANTS and rng.random() < 0.5 and not plausible(s.verb, s.obj, s.subj):
                s = swapped
            else:
                s = sample_sentence(rng, False)
        rows.append({"text": s.text(), "label": label})
    rng.shuffle(rows)
    return rows


class NgramGenerator:
    """The small built-in causal 'LM' used for fake endings offline.

    An order-n Markov chain over the corpus words: fluent like GPT-2's fakes
    (grammatical, right words in right places) but blind to the hidden
    semantics, so telling real from fake means learning what is plausible.
    A context it never saw (a prompt from sentences it was not fitted on) backs
    off to its last words, then to the corpus' word frequencies.
    """

    def __init__(self, sentences: list[str], order: int = 3):
        self.order = order
        self.next: dict[tuple[str, ...], list[str]] = defaultdict(list)
        self.shorter: dict[tuple[str, ...], list[str]] = defaultdict(list)  # backoff contexts
        self.ends: set[tuple[str, ...]] = set()  # contexts a sentence ended on
        self.words: list[str] = []
        for s in sentences:
            words = s.split()
            self.words += words
            for i in range(1, len(words)):
                self.next[tuple(words[max(0, i - order + 1):i])].append(words[i])
                for k in range(1, min(i, order - 1)):
                    self.shorter[tuple(words[i - k:i])].append(words[i])
            if words:
                self.ends.add(tuple(words[-(order - 1):]))

    def _choices(self, context: tuple[str, ...]) -> list[str] | None:
        """Next words after context; None where a sentence ends (seen only as an end)."""
        choices = self.next.get(context)
        if choices or context in self.ends:
            return choices
        for k in range(len(context) - 1, 0, -1):
            if self.shorter.get(context[-k:]):
                return self.shorter[context[-k:]]
        return self.words or None

    def continue_text(self, prompt: str, n_words: int, rng: random.Random) -> str:
        """A fluent ending of exactly `n_words` words when one is found in a few
        tries (length-matched like the paper's fakes), else the last try cut to length."""
        out: list[str] = []
        for _ in range(20):
            words = prompt.split()
            out = []
            while len(out) <= n_words:
                choices = self._choices(tuple(words[-(self.order - 1):]))
                if not choices:
                    break
                words.append(rng.choice(choices))
                out.append(words[-1])
            if len(out) == n_words and tuple(words[-(self.order - 1):]) in self.ends:
                break
        return " ".join(out[:n_words])


def split_sentence(text: str) -> tuple[str, str]:
    words = text.split()
    half = len(words) // 2
    return " ".join(words[:half]), " ".join(words[half:])


def realfake_examples(sentences: list[str], generate, n_choices: int, seed: int) -> list[dict]:
    """STILTs real/fake multiple choice: prompt + (real ending among fakes).

    `generate(prompt, n_words, rng) -> str` produces a fake ending (the n-gram
    generator offline, a causal LM otherwise); fakes equal to the real ending are
    resampled a few times.
    """
    rng = random.Random(seed)
    rows = []
    for text in sentences:
        prompt, real = split_sentence(text)
        n_words = len(real.split())
        fakes: list[str] = []
        for _ in range(n_choices * 5):
            if len(fakes) == n_choices - 1:
                break
            fake = generate(prompt, n_words, rng)
            if fake and fake != real and fake not in fakes:
                fakes.append(fake)
        if len(fakes) < n_choices - 1:
            continue
        label = rng.randrange(n_choices)
        endings = fakes[:label] + [real] + fakes[label:]
        rows.append({"prompt": prompt, "endings": endings, "label": label})
    return rows
