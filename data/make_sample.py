#!/usr/bin/env python3
"""Generate the bundled synthetic parallel corpus used by the ``nmt`` quick start.

The corpus pairs two invented toy languages.  Everything is produced by a tiny
hand-written grammar from a seeded ``random.Random``; no external data is used,
and the output depends only on the seed and the split sizes (running the script
twice gives byte-identical files).

Source language (``*.src``) -- English-like:

* SVO clauses: ``Subject [aux] [not] Verb [Object] [PP]``; present (with
  do-support for negation), past and ``will`` future; copula clauses
  (``is/was/will be`` + adjective).
* Noun phrases: determiner (the, a/an, this/these, my, every, some) + up to two
  adjectives + noun, singular or plural (regular and irregular plurals), or a
  personal pronoun (I, you, he, she, we, they / me, him, her, us, them).
* One prepositional phrase per clause at most (in, on, under, near, behind,
  with, without, for).
* Sentence shapes: simple clause (optionally fronted by a time adverb such as
  ``yesterday``), clause + object relative clause (``the dog that ...``),
  clause + subordinate clause (because, when, if, although; in either order),
  ``say/think/... that`` + clause, and two clauses joined by and/but.

Target language (``*.tgt``) -- an invented, German-like language:

* Three genders (masculine, feminine, neuter) plus plural.  Articles,
  demonstratives, possessives and relative pronouns agree with the noun in
  gender and number, and masculine singular has a separate accusative form
  (``dor varn`` / ``don varn`` = "the dog" as subject / object).
* Adjectives follow the noun, in mirrored order, and take agreement endings
  (-o, -on, -a, -e, -i): "the big red dog" -> ``dor varn rudo groto``.
* Verbs agree in person and number.  Main clauses are verb-second with the
  non-finite part (participle, infinitive), negation ``nek`` and predicate
  adjectives at the end of the clause (the "verb bracket"); subordinate and
  relative clauses are verb-final; a fronted adverb or fronted subordinate
  clause triggers subject-verb inversion; relative and ``that`` clauses are
  moved after the main clause's verb bracket.

The translation is a deterministic function of the source sentence, so a
model can in principle reach a perfect score.  Both sides start with a capital
letter and end with a full stop.

Usage: ``python data/make_sample.py [--seed 1234] [--out DIR]
[--train 15000] [--dev 500] [--test 500]``.
"""

import argparse
import os
import random
import sys
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------
# Lexicon
# ---------------------------------------------------------------------------

# Noun rows: (english singular, english plural or None for regular, target
# stem, gender, target plural or None for the regular rule, class).
# Classes: "a" animate (can be a subject), "t" thing, "p" place.
_NOUNS = [
    # animate
    ("man", "men", "balt", "m", None, "a"),
    ("woman", "women", "frena", "f", None, "a"),
    ("child", "children", "bärn", "n", "bärnu", "a"),
    ("boy", None, "pojk", "m", None, "a"),
    ("girl", None, "milda", "f", None, "a"),
    ("teacher", None, "dosent", "m", None, "a"),
    ("doctor", None, "medik", "m", None, "a"),
    ("farmer", None, "gärd", "m", None, "a"),
    ("king", None, "rek", "m", None, "a"),
    ("queen", None, "rekina", "f", None, "a"),
    ("soldier", None, "kämp", "m", None, "a"),
    ("student", None, "studa", "f", None, "a"),
    ("friend", None, "vend", "m", None, "a"),
    ("neighbour", None, "nabra", "f", None, "a"),
    ("baker", None, "bakel", "m", None, "a"),
    ("dog", None, "varn", "m", None, "a"),
    ("cat", None, "mitsa", "f", None, "a"),
    ("horse", None, "ross", "n", None, "a"),
    ("bird", None, "pipa", "f", None, "a"),
    ("mouse", "mice", "müs", "f", None, "a"),
    ("fox", None, "rev", "m", None, "a"),
    ("wolf", "wolves", "ulv", "m", None, "a"),
    ("cow", None, "kuna", "f", None, "a"),
    ("goat", None, "gets", "n", None, "a"),
    ("rabbit", None, "kanil", "n", None, "a"),
    ("bear", None, "bor", "m", None, "a"),
    ("duck", None, "anda", "f", None, "a"),
    # things
    ("book", None, "bok", "n", "böki", "t"),
    ("letter", None, "brev", "n", None, "t"),
    ("apple", None, "apla", "f", None, "t"),
    ("ball", None, "bal", "m", None, "t"),
    ("key", None, "slüt", "m", None, "t"),
    ("cup", None, "tasa", "f", None, "t"),
    ("hat", None, "huda", "f", None, "t"),
    ("box", None, "kist", "f", None, "t"),
    ("chair", None, "stol", "m", None, "t"),
    ("table", None, "tavla", "f", None, "t"),
    ("flower", None, "blom", "f", None, "t"),
    ("stone", None, "sten", "m", None, "t"),
    ("rope", None, "rep", "n", None, "t"),
    ("song", None, "kanta", "f", None, "t"),
    ("cake", None, "torta", "f", None, "t"),
    ("coat", None, "mantel", "m", None, "t"),
    ("window", None, "fenst", "n", None, "t"),
    ("picture", None, "bild", "n", None, "t"),
    ("boat", None, "bot", "n", None, "t"),
    ("car", None, "vogn", "m", None, "t"),
    ("lamp", None, "lampa", "f", None, "t"),
    ("map", None, "karta", "f", None, "t"),
    ("ring", None, "anel", "m", None, "t"),
    ("egg", None, "ovo", "n", None, "t"),
    # places
    ("garden", None, "hort", "m", None, "p"),
    ("house", None, "hus", "n", "hüsi", "p"),
    ("city", None, "stada", "f", None, "p"),
    ("forest", None, "vald", "m", None, "p"),
    ("river", None, "flöda", "f", None, "p"),
    ("village", None, "dorp", "n", None, "p"),
    ("school", None, "skol", "f", None, "p"),
    ("kitchen", None, "kökna", "f", None, "p"),
    ("market", None, "torg", "n", None, "p"),
    ("church", None, "kirk", "f", None, "p"),
    ("bridge", None, "brük", "f", None, "p"),
    ("field", None, "feld", "n", None, "p"),
    ("mountain", None, "berg", "m", None, "p"),
    ("street", None, "gata", "f", None, "p"),
]

# Verb rows: (english base, english past or None for regular -ed, target stem).
_TRANSITIVE = [
    ("see", "saw", "sev"),
    ("find", "found", "fünd"),
    ("take", "took", "nem"),
    ("love", None, "lüb"),
    ("like", None, "gust"),
    ("hate", None, "hass"),
    ("help", None, "hilp"),
    ("chase", None, "jag"),
    ("call", None, "rop"),
    ("visit", None, "besök"),
    ("carry", None, "drag"),
    ("eat", "ate", "mang"),
    ("buy", "bought", "köp"),
    ("sell", "sold", "verk"),
    ("hold", "held", "hald"),
    ("open", None, "öfn"),
    ("paint", None, "mal"),
    ("wash", None, "vask"),
    ("catch", "caught", "fang"),
    ("follow", None, "folg"),
    ("bring", "brought", "brang"),
    ("build", "built", "bov"),
    ("write", "wrote", "skriv"),
    ("draw", "drew", "tek"),
]
_INTRANSITIVE = [
    ("sleep", "slept", "slap"),
    ("run", "ran", "lop"),
    ("sing", "sang", "sjong"),
    ("laugh", None, "lak"),
    ("wait", None, "vart"),
    ("dance", None, "dans"),
    ("swim", "swam", "sim"),
    ("cry", None, "gret"),
    ("work", None, "arb"),
    ("play", None, "spel"),
]
# Verbs that take a "that" clause (and never a noun object).
_CLAUSAL = [
    ("say", "said", "sag"),
    ("think", "thought", "denk"),
    ("believe", None, "glov"),
    ("hope", None, "hof"),
    ("know", "knew", "vet"),
]

# Adjectives: (english, target stem); target stems end in a consonant.
_ADJECTIVES = [
    ("big", "grot"),
    ("small", "lit"),
    ("red", "rud"),
    ("blue", "blav"),
    ("green", "grön"),
    ("old", "ald"),
    ("young", "jung"),
    ("happy", "glad"),
    ("sad", "trist"),
    ("tall", "lang"),
    ("beautiful", "skön"),
    ("ugly", "fül"),
    ("fast", "snel"),
    ("slow", "lams"),
    ("strong", "stark"),
    ("weak", "svak"),
    ("clever", "klok"),
    ("tired", "möd"),
    ("hungry", "hungr"),
    ("angry", "arg"),
    ("quiet", "stil"),
    ("white", "vit"),
    ("black", "svart"),
    ("brown", "brun"),
    ("new", "növ"),
    ("rich", "rik"),
    ("poor", "arm"),
]

# Prepositions: (english, target, noun classes allowed for its object).
_PREPOSITIONS = [
    ("in", "ind", "pt"),
    ("on", "pa", "t"),
    ("under", "unnar", "tp"),
    ("near", "nära", "tp"),
    ("behind", "bakom", "tp"),
    ("with", "mid", "at"),
    ("without", "uten", "at"),
    ("for", "fur", "a"),
]

# Agreement slots: m/f/n singular nominative, "m_acc", and plural "pl".
# Determiners: english singular, english plural (None = singular only;
# "" = bare plural not used), target forms by slot.
_DETERMINERS = {
    "the": ("the", "the", {"m": "dor", "m_acc": "don", "f": "la", "n": "et", "pl": "ös"}),
    "a": ("a", "some", {"m": "en", "m_acc": "enan", "f": "ena", "n": "en", "pl": "kel"}),
    "this": ("this", "these", {"m": "tes", "m_acc": "tesan", "f": "tesa", "n": "tes", "pl": "tesi"}),
    "my": ("my", "my", {"m": "mor", "m_acc": "moran", "f": "mora", "n": "mor", "pl": "möri"}),
    "every": ("every", None, {"m": "alk", "m_acc": "alkan", "f": "alka", "n": "alk", "pl": None}),
}
_DET_WEIGHTS = [("the", 45), ("a", 22), ("this", 12), ("my", 14), ("every", 7)]

# Adjective ending by agreement slot.
_ADJ_END = {"m": "o", "m_acc": "on", "f": "a", "n": "e", "pl": "i"}

# Persons: 1s, 2s, 3s, 1p, 3p.
_PRONOUNS = [
    # (english subj, english obj, person, target subj, target obj)
    ("I", "me", "1s", "ek", "mek"),
    ("you", "you", "2s", "tu", "tek"),
    ("he", "him", "3s", "han", "hanom"),
    ("she", "her", "3s", "sün", "süne"),
    ("we", "us", "1p", "vi", "os"),
    ("they", "them", "3p", "dei", "deim"),
]
_VERB_END = {"1s": "o", "2s": "is", "3s": "et", "1p": "em", "3p": "en"}
_AUX_PERFECT = {"1s": "ai", "2s": "as", "3s": "at", "1p": "amo", "3p": "an"}
_AUX_FUTURE = {"1s": "volo", "2s": "vol", "3s": "vol", "1p": "volem", "3p": "volen"}
_COP_PRESENT = {"1s": "süm", "2s": "ses", "3s": "es", "1p": "sümo", "3p": "sun"}
_COP_PAST = {"1s": "vare", "2s": "vares", "3s": "var", "1p": "varem", "3p": "varen"}
_COP_INF = "esa"
_EN_BE_PRESENT = {"1s": "am", "2s": "are", "3s": "is", "1p": "are", "3p": "are"}
_EN_BE_PAST = {"1s": "was", "2s": "were", "3s": "was", "1p": "were", "3p": "were"}
_NEG = "nek"

# Conjunctions: english -> target.
_SUBORDINATORS = [("because", "kar"), ("when", "nar"), ("if", "om"), ("although", "tolsa")]
_COORDINATORS = [("and", "og"), ("but", "men")]
_COMPLEMENTIZER = ("that", "ta")

# Fronted time adverbs: (english, target, allowed tenses).
_ADVERBS = [
    ("yesterday", "gistra", ("past",)),
    ("tomorrow", "morga", ("future",)),
    ("today", "odä", ("present", "past", "future")),
    ("now", "nuva", ("present",)),
]


# ---------------------------------------------------------------------------
# Morphology helpers
# ---------------------------------------------------------------------------

def _en_plural(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _en_third(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh", "o")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _en_past(word: str) -> str:
    if word.endswith("e"):
        return word + "d"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ied"
    return word + "ed"


def _tgt_plural(stem: str, gender: str) -> str:
    if gender == "m":
        return stem + "ar"
    if gender == "f":
        return stem[:-1] + "en" if stem.endswith("a") else stem + "en"
    return stem + "n" if stem[-1] in "aeiouäöü" else stem + "i"


@dataclass(frozen=True)
class Noun:
    en_sg: str
    en_pl: str
    tgt_sg: str
    tgt_pl: str
    gender: str
    cls: str


@dataclass(frozen=True)
class Verb:
    en_base: str
    en_third: str
    en_past: str
    stem: str

    def tgt_present(self, person: str) -> str:
        return self.stem + _VERB_END[person]

    @property
    def tgt_inf(self) -> str:
        return self.stem + "a"

    @property
    def tgt_part(self) -> str:
        return "gu" + self.stem + "at"


NOUNS = [
    Noun(en, enp or _en_plural(en), t, tp or _tgt_plural(t, g), g, c)
    for en, enp, t, g, tp, c in _NOUNS
]


def _verbs(rows):
    return [Verb(b, _en_third(b), p or _en_past(b), s) for b, p, s in rows]


TRANSITIVE = _verbs(_TRANSITIVE)
INTRANSITIVE = _verbs(_INTRANSITIVE)
CLAUSAL = _verbs(_CLAUSAL)
NOUNS_BY_CLASS = {c: [n for n in NOUNS if n.cls == c] for c in "atp"}


# ---------------------------------------------------------------------------
# Grammar
# ---------------------------------------------------------------------------

@dataclass
class NP:
    en: list[str]
    tgt_nom: list[str]
    tgt_acc: list[str]
    person: str  # 1s 2s 3s 1p 3p
    slot: str  # agreement slot for relative pronouns: m f n pl


@dataclass
class Clause:
    """One clause in both languages, before target word order is fixed."""

    en: list[str]
    subj: list[str]
    vfin: str
    middle: list[str] = field(default_factory=list)
    end: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)  # extraposed material

    def main(self) -> list[str]:
        return self.subj + [self.vfin] + self.middle + self.end + self.tail

    def inverted(self) -> list[str]:
        return [self.vfin] + self.subj + self.middle + self.end + self.tail

    def final(self) -> list[str]:
        return self.subj + self.middle + self.end + [self.vfin] + self.tail


class Generator:
    def __init__(self, rng: random.Random):
        self.rng = rng

    # -- small helpers -----------------------------------------------------
    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def weighted(self, pairs):
        total = sum(w for _, w in pairs)
        x = self.rng.random() * total
        for item, w in pairs:
            x -= w
            if x < 0:
                return item
        return pairs[-1][0]

    # -- phrases -------------------------------------------------------------
    def noun_phrase(self, classes: str) -> NP:
        rng = self.rng
        pool = [n for c in classes for n in NOUNS_BY_CLASS[c]]
        noun = rng.choice(pool)
        plural = self.chance(0.3)
        det_key = self.weighted(_DET_WEIGHTS)
        en_sg_det, en_pl_det, tforms = _DETERMINERS[det_key]
        if plural and en_pl_det is None:
            plural = False
        n_adj = self.weighted([(0, 55), (1, 33), (2, 12)])
        adjs = rng.sample(_ADJECTIVES, n_adj)
        en_noun = noun.en_pl if plural else noun.en_sg
        en_words = [a for a, _ in adjs] + [en_noun]
        en_det = en_pl_det if plural else en_sg_det
        if en_det == "a" and en_words[0][0] in "aeiou":
            en_det = "an"
        slot_nom = "pl" if plural else noun.gender
        slot_acc = "m_acc" if slot_nom == "m" else slot_nom
        t_noun = noun.tgt_pl if plural else noun.tgt_sg

        def tgt(slot):
            # adjectives follow the noun in mirrored order
            return [tforms[slot], t_noun] + [t + _ADJ_END[slot] for _, t in reversed(adjs)]

        return NP(
            en=[en_det] + en_words,
            tgt_nom=tgt(slot_nom),
            tgt_acc=tgt(slot_acc),
            person="3p" if plural else "3s",
            slot=slot_nom,
        )

    def pronoun(self) -> NP:
        en_s, en_o, person, t_s, t_o = self.rng.choice(_PRONOUNS)
        return NP(en=[en_s], tgt_nom=[t_s], tgt_acc=[t_o], person=person, slot="")

    def pronoun_obj(self) -> NP:
        en_s, en_o, person, t_s, t_o = self.rng.choice(_PRONOUNS)
        return NP(en=[en_o], tgt_nom=[t_s], tgt_acc=[t_o], person=person, slot="")

    def subject(self) -> NP:
        return self.pronoun() if self.chance(0.2) else self.noun_phrase("a")

    def obj(self) -> NP:
        return self.pronoun_obj() if self.chance(0.1) else self.noun_phrase("at")

    def prep_phrase(self) -> tuple[list[str], list[str]]:
        en_p, t_p, classes = self.rng.choice(_PREPOSITIONS)
        np = self.noun_phrase(classes)
        return [en_p] + np.en, [t_p] + np.tgt_acc

    # -- clauses -------------------------------------------------------------
    def clause(
        self,
        *,
        tense: str | None = None,
        kind: str | None = None,
        allow_pp: bool = True,
        subj: NP | None = None,
        rel_obj: bool = False,
    ) -> tuple[Clause, NP | None]:
        """Build one clause.

        kind: "tr", "intr", "cop" or "clausal".  With ``rel_obj`` the object
        is gapped (object relative clause) and the clause has no object.
        Returns the clause and its object NP (or None).
        """
        rng = self.rng
        if tense is None:
            tense = self.weighted([("present", 40), ("past", 35), ("future", 25)])
        if kind is None:
            kind = self.weighted([("tr", 55), ("intr", 30), ("cop", 15)])
        if subj is None:
            subj = self.subject()
        person = subj.person
        neg = self.chance(0.12)
        third = person == "3s"

        en: list[str] = list(subj.en)
        middle: list[str] = []
        end: list[str] = []
        obj_np = None

        if kind == "cop":
            adj_en, adj_t = rng.choice(_ADJECTIVES)
            if tense == "present":
                en.append(_EN_BE_PRESENT[person])
                vfin = _COP_PRESENT[person]
            elif tense == "past":
                en.append(_EN_BE_PAST[person])
                vfin = _COP_PAST[person]
            else:
                en.append("will")
                vfin = _AUX_FUTURE[person]
            if neg:
                en.append("not")
            if tense == "future":
                en.append("be")
            en.append(adj_en)
            end = ([_NEG] if neg else []) + [adj_t] + ([_COP_INF] if tense == "future" else [])
            allow_pp = False
        else:
            verb = rng.choice({"tr": TRANSITIVE, "intr": INTRANSITIVE, "clausal": CLAUSAL}[kind])
            if tense == "present":
                if neg:
                    en += ["does" if third else "do", "not", verb.en_base]
                else:
                    en.append(verb.en_third if third else verb.en_base)
                vfin = verb.tgt_present(person)
                nonfin = []
            elif tense == "past":
                en += ["did", "not", verb.en_base] if neg else [verb.en_past]
                vfin = _AUX_PERFECT[person]
                nonfin = [verb.tgt_part]
            else:
                en += ["will", "not", verb.en_base] if neg else ["will", verb.en_base]
                vfin = _AUX_FUTURE[person]
                nonfin = [verb.tgt_inf]
            if kind == "tr" and not rel_obj:
                obj_np = self.obj()
                en += obj_np.en
                middle += obj_np.tgt_acc
            end = ([_NEG] if neg else []) + nonfin
            if kind == "clausal":
                allow_pp = False

        if allow_pp and self.chance(0.35):
            pp_en, pp_t = self.prep_phrase()
            en += pp_en
            middle += pp_t

        return Clause(en=en, subj=list(subj.tgt_nom), vfin=vfin, middle=middle, end=end), obj_np

    def relative_clause(self, head: NP) -> tuple[list[str], list[str]]:
        """Relative clause on ``head`` (a noun phrase): English + target."""
        rel_nom = _DETERMINERS["the"][2][head.slot]
        if self.chance(0.5):
            # subject relative: "the dog that chases the cat"
            subj = NP(en=[], tgt_nom=[], tgt_acc=[], person="3p" if head.slot == "pl" else "3s", slot="")
            cl, _ = self.clause(subj=subj)
            return ["that"] + cl.en, [rel_nom] + cl.final()
        # object relative: "the dog that the cat chases"
        slot_acc = "m_acc" if head.slot == "m" else head.slot
        rel_acc = _DETERMINERS["the"][2][slot_acc]
        cl, _ = self.clause(kind="tr", rel_obj=True)
        return ["that"] + cl.en, [rel_acc] + cl.final()

    def sentence(self) -> tuple[list[str], list[str]]:
        shape = self.weighted(
            [("simple", 22), ("adverb", 10), ("relative", 18), ("sub_after", 18),
             ("sub_before", 10), ("complement", 12), ("coord", 10)]
        )
        if shape == "simple":
            cl, _ = self.clause()
            return cl.en, cl.main()
        if shape == "adverb":
            en_a, t_a, tenses = self.rng.choice(_ADVERBS)
            cl, _ = self.clause(tense=self.rng.choice(tenses))
            return [en_a] + cl.en, [t_a] + cl.inverted()
        if shape == "relative":
            cl, obj = self.clause(kind="tr", allow_pp=False)
            if obj is None or not obj.slot:  # pronoun object: no relative clause
                return cl.en, cl.main()
            rel_en, rel_t = self.relative_clause(obj)
            cl.tail = [","] + rel_t
            return cl.en + rel_en, cl.main()
        if shape == "sub_after":
            en_c, t_c = self.rng.choice(_SUBORDINATORS)
            main, _ = self.clause()
            sub, _ = self.clause()
            return main.en + [en_c] + sub.en, main.main() + [",", t_c] + sub.final()
        if shape == "sub_before":
            en_c, t_c = self.rng.choice(_SUBORDINATORS)
            sub, _ = self.clause()
            main, _ = self.clause()
            return [en_c] + sub.en + [","] + main.en, [t_c] + sub.final() + [","] + main.inverted()
        if shape == "complement":
            main, _ = self.clause(kind="clausal")
            sub, _ = self.clause()
            en_c, t_c = _COMPLEMENTIZER
            main.tail = [",", t_c] + sub.final()
            return main.en + [en_c] + sub.en, main.main()
        # coordination of two main clauses
        en_c, t_c = self.rng.choice(_COORDINATORS)
        a, _ = self.clause()
        b, _ = self.clause()
        return a.en + [en_c] + b.en, a.main() + [",", t_c] + b.main()


def _render(tokens: list[str]) -> str:
    text = " ".join(tokens).replace(" ,", ",")
    return text[0].upper() + text[1:] + "."


MIN_LEN, MAX_LEN = 4, 25


def generate(seed: int = 1234, counts=(15000, 500, 500)) -> list[list[tuple[str, str]]]:
    """Return one list of (src, tgt) pairs per split, in order of ``counts``.

    Every source sentence occurs at most once over all splits; since the
    translation is a function of the source, pairs are unique too.
    """
    gen = Generator(random.Random(seed))
    seen: set[str] = set()
    splits: list[list[tuple[str, str]]] = []
    for n in counts:
        split: list[tuple[str, str]] = []
        attempts = 0
        while len(split) < n:
            attempts += 1
            if attempts > 100 * n + 10000:
                raise RuntimeError("could not generate enough distinct sentences")
            en, tgt = gen.sentence()
            if not MIN_LEN <= len(en) <= MAX_LEN:
                continue
            src = _render(en)
            if src in seen:
                continue
            seen.add(src)
            split.append((src, _render(tgt)))
        splits.append(split)
    return splits


def write_corpus(out_dir: str, seed: int = 1234, train: int = 15000, dev: int = 500,
                 test: int = 500) -> list[str]:
    """Generate the corpus into ``out_dir``; return the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    names = ["train", "dev", "test"]
    paths = []
    for name, pairs in zip(names, generate(seed, (train, dev, test))):
        for side, idx in (("src", 0), ("tgt", 1)):
            path = os.path.join(out_dir, f"{name}.{side}")
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write("".join(p[idx] + "\n" for p in pairs))
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="Generate the synthetic sample parallel corpus.")
    ap.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    ap.add_argument("--out", default=os.path.join(here, "sample"),
                    help="output folder (default: data/sample next to this script)")
    ap.add_argument("--train", type=int, default=15000, help="training pairs (default 15000)")
    ap.add_argument("--dev", type=int, default=500, help="dev pairs (default 500)")
    ap.add_argument("--test", type=int, default=500, help="test pairs (default 500)")
    args = ap.parse_args(argv)
    for p in write_corpus(args.out, args.seed, args.train, args.dev, args.test):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
