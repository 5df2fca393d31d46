"""Word tables of the arithmetic word-problem generator (:mod:`tpt_jax.tasks.arithmetic`): names,
settings (what is counted, in which containers, with which sentences), money phrasings.

Data only: changing any table changes every generated problem, so the tables are part of what
makes :func:`tpt_jax.tasks.arithmetic.generate_problems` deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONNECTORS",
    "EARN",
    "FEMALE",
    "MALE",
    "MONEY",
    "MONEY_STARTS_MUL",
    "PART",
    "RELATIVES",
    "SETTINGS",
    "SPEND",
    "TIMES",
    "Person",
    "Setting",
    "Thing",
]

FEMALE = (
    "Mia Ava Emma Sofia Lily Chloe Zoe Nora Maya Ruby Grace Leah Hannah Aisha Priya Elena Rosa "
    "Yuki Fatima Ines Clara Julia Amara Naomi Tessa Lucy Keiko Maria Olivia Sara"
).split()
MALE = (
    "Liam Noah Ethan Lucas Mason Omar Leo Jack Ben Sam Ravi Diego Kenji Hugo Felix Owen Adam "
    "Tariq Marco Jonah Elijah Arjun Mateo Kofi Pablo Theo Isaac Daniel Tom Victor"
).split()
RELATIVES = ("brother", "sister", "cousin", "friend", "neighbor", "grandmother", "aunt", "uncle")
CONNECTORS = ("", "", "Then ", "Later, ", "After that, ", "Next, ")


@dataclass(frozen=True)
class Person:
    name: str
    female: bool

    @property
    def subj(self) -> str:
        return "she" if self.female else "he"

    @property
    def obj(self) -> str:
        return "her" if self.female else "him"

    @property
    def pos(self) -> str:
        return "her" if self.female else "his"

    @property
    def refl(self) -> str:
        return "herself" if self.female else "himself"


@dataclass(frozen=True)
class Thing:
    """What is counted. ``owned`` things can be given away, sold, shared and packed; the others
    (points, laps, miles, pages) only add up and compare."""

    one: str
    many: str
    owned: bool = True
    verb: tuple[str, str] = ("has", "have")  # (he ..., does he ...) in comparisons and questions
    start: tuple[str, ...] = ()  # overrides of the setting's phrases
    gain: tuple[str, ...] = ()
    lose: tuple[str, ...] = ()
    pack: tuple[str, str] | None = None  # (sentence with {k}, question); None: the setting's
    rate: tuple[str, str, int, int] | None = None  # (sentence with {k}, question, k from, k to)


@dataclass(frozen=True)
class Setting:
    name: str
    things: tuple[Thing, ...]
    start: tuple[str, ...]
    gain: tuple[str, ...]
    lose: tuple[str, ...]
    boxes: tuple[tuple[str, str], ...]  # containers: (one, many)
    pack: tuple[str, str] | None  # (sentence with {k} and {boxes}, question)
    sells: bool  # owned things can be sold for a price (turns the count into money)
    spend: tuple[str, ...]  # what money is spent on
    money_start: tuple[str, ...] = ()  # a money-only setting starts with these (savings)


def _t(one: str, many: str, **kw: Any) -> Thing:
    return Thing(one, many, **kw)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "shop",
        tuple(
            _t(o, m)
            for o, m in [
                ("pencil", "pencils"),
                ("notebook", "notebooks"),
                ("eraser", "erasers"),
                ("candle", "candles"),
                ("toy car", "toy cars"),
                ("keychain", "keychains"),
                ("mug", "mugs"),
            ]
        ),
        start=(
            "{who} has {n} {many} for sale in {pos} shop.",
            "{who} runs a small shop and has {n} {many} on the shelf.",
            "There are {n} {many} in {name}'s shop.",
        ),
        gain=(
            "{who} orders {n} more {many} from the supplier.",
            "a delivery brings {name} {n} more {many}.",
            "{who} unpacks another {n} {many}.",
        ),
        lose=(
            "{who} sells {n} {many}.",
            "a customer buys {n} of {name}'s {many}.",
            "{n} of the {many} are damaged, so {who_l} sends them back.",
        ),
        boxes=(("box", "boxes"), ("pack", "packs"), ("crate", "crates")),
        pack=(
            "{who} puts all the {many} into {boxes} of {k}.",
            "How many {boxes} does {name} fill?",
        ),
        sells=True,
        spend=("a new shelf", "paint for the shop", "a sign", "lunch"),
    ),
    Setting(
        "bakery",
        tuple(
            _t(o, m)
            for o, m in [
                ("cookie", "cookies"),
                ("muffin", "muffins"),
                ("cupcake", "cupcakes"),
                ("bagel", "bagels"),
                ("roll", "rolls"),
                ("brownie", "brownies"),
            ]
        )
        + (
            _t(
                "cup of flour",
                "cups of flour",
                start=("{who} has {n} cups of flour in the bakery.",),
                gain=("{who} buys {n} more cups of flour.",),
                lose=("{who} uses {n} cups of flour for a cake.",),
                pack=(
                    "{who} uses all the flour to bake loaves of bread that need {k} cups each.",
                    "How many loaves of bread does {name} bake?",
                ),
            ),
        ),
        start=(
            "{who} bakes {n} {many} in the morning.",
            "{who} has {n} {many} on a tray at the bakery.",
            "A bakery owner named {name} makes {n} {many}.",
        ),
        gain=(
            "{who} bakes {n} more {many}.",
            "{who} makes another {n} {many}.",
            "{pos} {rel} brings {name} {n} more {many}.",
        ),
        lose=(
            "{who} sells {n} {many}.",
            "{who} gives {n} {many} to {pos} {rel}.",
            "{n} of the {many} get burned, so {who_l} throws them away.",
        ),
        boxes=(("box", "boxes"), ("tray", "trays"), ("bag", "bags")),
        pack=(
            "{who} packs all the {many} into {boxes} of {k}.",
            "How many {boxes} does {name} fill?",
        ),
        sells=True,
        spend=("flour", "a new oven mitt", "sugar", "a cake stand"),
    ),
    Setting(
        "farm",
        tuple(
            _t(o, m)
            for o, m in [
                ("egg", "eggs"),
                ("apple", "apples"),
                ("potato", "potatoes"),
                ("carrot", "carrots"),
                ("pumpkin", "pumpkins"),
                ("pear", "pears"),
            ]
        )
        + (
            _t(
                "liter of milk",
                "liters of milk",
                start=("{name}'s cows give {n} liters of milk in the morning.",),
                gain=("{name}'s cows give {n} more liters of milk in the evening.",),
                lose=("{who} sells {n} liters of milk to a neighbor.",),
                pack=(
                    "{who} pours all the milk into jugs that hold {k} liters each.",
                    "How many jugs does {name} fill?",
                ),
            ),
        ),
        start=(
            "{who} collects {n} {many} on the farm.",
            "{who} has {n} {many} in the barn.",
            "A farmer named {name} harvests {n} {many}.",
        ),
        gain=(
            "{who} collects {n} more {many}.",
            "{who} gathers another {n} {many}.",
            "{pos} {rel} brings {name} {n} more {many} from the field.",
        ),
        lose=(
            "{who} sells {n} {many} at the market.",
            "{n} of the {many} are spoiled, so {who_l} throws them away.",
            "{who} gives {n} {many} to {pos} {rel}.",
        ),
        boxes=(("basket", "baskets"), ("crate", "crates"), ("bucket", "buckets")),
        pack=(
            "{who} puts all the {many} into {boxes} of {k}.",
            "How many {boxes} does {name} fill?",
        ),
        sells=True,
        spend=("chicken feed", "a new fence post", "seeds", "a shovel"),
    ),
    Setting(
        "school",
        tuple(
            _t(o, m)
            for o, m in [
                ("crayon", "crayons"),
                ("sticker", "stickers"),
                ("marker", "markers"),
                ("paper clip", "paper clips"),
                ("index card", "index cards"),
            ]
        )
        + (
            _t(
                "page",
                "pages",
                owned=False,
                verb=("reads", "read"),
                start=("{who} reads {n} pages of a book for school.",),
                gain=("{who} reads {n} more pages.", "{who} reads another {n} pages."),
            ),
        ),
        start=(
            "{who} has {n} {many} in {pos} desk.",
            "{who} brings {n} {many} to school.",
            "There are {n} {many} in {name}'s pencil case.",
        ),
        gain=(
            "{name}'s teacher gives {obj} {n} more {many}.",
            "{who} finds {n} more {many} in the classroom.",
            "{pos} {rel} gives {name} {n} {many}.",
        ),
        lose=(
            "{who} gives {n} {many} to a classmate.",
            "{who} loses {n} {many} at recess.",
            "{who} uses up {n} of the {many} in art class.",
        ),
        boxes=(("box", "boxes"), ("cup", "cups"), ("bundle", "bundles")),
        pack=(
            "{who} sorts all the {many} into {boxes} of {k}.",
            "How many {boxes} does {name} make?",
        ),
        sells=False,
        spend=("a backpack", "a lunch box", "a new ruler", "a field trip"),
    ),
    Setting(
        "travel",
        tuple(
            _t(o, m)
            for o, m in [
                ("postcard", "postcards"),
                ("souvenir", "souvenirs"),
                ("stamp", "stamps"),
                ("seashell", "seashells"),
            ]
        )
        + (
            _t(
                "mile",
                "miles",
                owned=False,
                verb=("drives", "drive"),
                start=("{who} drives {n} miles on the first day of a road trip.",),
                gain=(
                    "{who} drives another {n} miles.",
                    "the next day, {who_l} drives {n} more miles.",
                ),
                rate=(
                    "{who} drives at a steady {k} miles per hour the whole time.",
                    "How many hours does {name} spend driving?",
                    20,
                    70,
                ),
            ),
            _t(
                "kilometer",
                "kilometers",
                owned=False,
                verb=("walks", "walk"),
                start=("On a hiking trip, {who_l} walks {n} kilometers.",),
                gain=("{who} walks another {n} kilometers.",),
                rate=(
                    "{who} walks at {k} kilometers per hour the whole time.",
                    "How many hours does {name} spend walking?",
                    2,
                    6,
                ),
            ),
        ),
        start=(
            "On a trip to the coast, {who_l} collects {n} {many}.",
            "{who} buys {n} {many} on vacation.",
            "{who} comes back from a trip with {n} {many}.",
        ),
        gain=(
            "{who} collects {n} more {many} in the next town.",
            "{who} buys another {n} {many} at the airport.",
            "{pos} {rel} sends {name} {n} more {many}.",
        ),
        lose=(
            "{who} gives {n} {many} to {pos} {rel}.",
            "{who} loses {n} {many} on the train.",
            "{who} mails {n} of the {many} to friends.",
        ),
        boxes=(("bag", "bags"), ("envelope", "envelopes"), ("box", "boxes")),
        pack=(
            "{who} puts all the {many} into {boxes} of {k}.",
            "How many {boxes} does {name} fill?",
        ),
        sells=False,
        spend=("a train ticket", "a hotel room", "dinner", "a museum ticket"),
    ),
    Setting(
        "savings",
        (),
        start=(),
        gain=(),
        lose=(),
        boxes=(),
        pack=None,
        sells=False,
        spend=("a book", "a video game", "a scarf", "a pair of shoes", "a bike helmet"),
        money_start=("{who} has ${n} in a piggy bank.", "{who} has saved ${n}.", "{who} has ${n}."),
    ),
    Setting(
        "sports",
        (
            _t("tennis ball", "tennis balls"),
            _t("water bottle", "water bottles"),
            _t("cone", "cones"),
            _t("jersey", "jerseys"),
            _t(
                "point",
                "points",
                owned=False,
                verb=("scores", "score"),
                start=("{who} scores {n} points in the first game of the season.",),
                gain=("{who} scores {n} more points in the next game.",),
                lose=("{who} loses {n} points for a penalty.",),
            ),
            _t(
                "lap",
                "laps",
                owned=False,
                verb=("swims", "swim"),
                start=("{who} swims {n} laps at practice.",),
                gain=("{who} swims another {n} laps.", "{who} swims {n} more laps."),
            ),
        ),
        start=(
            "Coach {name} has {n} {many} in the gym.",
            "{who} buys {n} {many} for the team.",
            "The team gives {name} {n} {many} to look after.",
        ),
        gain=(
            "{who} buys {n} more {many} for the team.",
            "the school gives {name} another {n} {many}.",
            "{who} finds {n} more {many} in the storage room.",
        ),
        lose=(
            "{n} of the {many} get lost during practice.",
            "{who} gives {n} {many} to another team.",
            "{who} throws away {n} old {many}.",
        ),
        boxes=(("bag", "bags"), ("bucket", "buckets"), ("box", "boxes")),
        pack=(
            "{who} puts all the {many} into {boxes} of {k}.",
            "How many {boxes} does {name} fill?",
        ),
        sells=True,
        spend=("a new whistle", "a team photo", "snacks for the team"),
    ),
    Setting(
        "garden",
        tuple(
            _t(o, m)
            for o, m in [
                ("seed", "seeds"),
                ("tulip bulb", "tulip bulbs"),
                ("seedling", "seedlings"),
                ("rose bush", "rose bushes"),
                ("pepper plant", "pepper plants"),
            ]
        ),
        start=(
            "{who} has {n} {many} for {pos} garden.",
            "{who} buys {n} {many} at the garden center.",
            "{pos} {rel} gives {name} {n} {many} for the garden.",
        ),
        gain=(
            "{who} buys {n} more {many}.",
            "{pos} {rel} gives {name} another {n} {many}.",
            "{who} gets {n} more {many} from a neighbor.",
        ),
        lose=(
            "{who} gives away {n} {many}.",
            "{n} of the {many} are damaged by the frost, so {who_l} throws them out.",
            "{who} trades {n} of the {many} for some tools.",
        ),
        boxes=(("pot", "pots"), ("tray", "trays"), ("box", "boxes")),
        pack=("{who} plants all the {many} in rows of {k}.", "How many rows does {name} plant?"),
        sells=True,
        spend=("a watering can", "a bag of soil", "garden gloves"),
    ),
    Setting(
        "library",
        tuple(
            _t(o, m)
            for o, m in [
                ("book", "books"),
                ("magazine", "magazines"),
                ("comic book", "comic books"),
                ("atlas", "atlases"),
            ]
        ),
        start=(
            "{who} has {n} {many} on a library cart.",
            "A librarian named {name} has {n} {many} to sort.",
            "{who} collects {n} {many} from the return box.",
        ),
        gain=(
            "{who} adds {n} more {many} to the cart.",
            "readers return another {n} {many} to {name}.",
            "{who} picks up {n} more {many} from the front desk.",
        ),
        lose=(
            "{who} puts {n} of the {many} back on the shelves.",
            "{who} lends {n} {many} to a school.",
            "{n} of the {many} are too worn out, so {who_l} recycles them.",
        ),
        boxes=(("box", "boxes"), ("stack", "stacks"), ("bin", "bins")),
        pack=(
            "{who} puts all the {many} on shelves that hold {k} each.",
            "How many shelves does {name} fill?",
        ),
        sells=False,
        spend=("new bookmarks", "a reading lamp", "tape for torn pages"),
    ),
    Setting(
        "party",
        tuple(
            _t(o, m)
            for o, m in [
                ("balloon", "balloons"),
                ("paper cup", "paper cups"),
                ("party hat", "party hats"),
                ("plate", "plates"),
                ("napkin", "napkins"),
            ]
        ),
        start=(
            "{who} buys {n} {many} for a party.",
            "{who} has {n} {many} for {pos} birthday party.",
            "For a party, {who_l} gets {n} {many}.",
        ),
        gain=(
            "{who} buys {n} more {many}.",
            "{pos} {rel} brings {name} {n} more {many}.",
            "{who} finds another {n} {many} in the closet.",
        ),
        lose=(
            "{who} gives {n} {many} to {pos} {rel}.",
            "{n} of the {many} are broken, so {who_l} throws them away.",
            "{who} uses {n} of the {many} before the party starts.",
        ),
        boxes=(("pack", "packs"), ("bag", "bags"), ("box", "boxes")),
        pack=(
            "{who} puts {k} {many} on each table and uses all of them.",
            "How many tables does {name} set?",
        ),
        sells=False,
        spend=("a cake", "music for the party", "snacks"),
    ),
)

MONEY = Thing("dollar", "dollars", owned=True)
EARN = (
    "{who} earns ${n} more by walking dogs.",
    "{pos} {rel} gives {name} ${n}.",
    "{who} gets ${n} for {pos} birthday.",
    "{who} earns another ${n} doing chores.",
)
SPEND = (
    "{who} spends ${n} on {item}.",
    "{who} buys {item} for ${n}.",
    "{who} pays ${n} for {item}.",
)
MONEY_STARTS_MUL = (
    ("{who} saves ${n} each week for {k} weeks.", "{name} saves {k} * ${n} = ${r}."),
    ("{who} earns ${n} a day for {k} days.", "{name} earns {k} * ${n} = ${r}."),
)

# How many times as many / what part as much, in words.
TIMES = {2: "twice", 3: "3 times", 4: "4 times", 5: "5 times", 6: "6 times"}
PART = {2: "half", 3: "a third", 4: "a quarter"}
