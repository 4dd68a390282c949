"""Captions with punctuation, brackets, quotes, unicode and more: shared by the metrics tests."""

from __future__ import annotations

LONG = " ".join(["the striped cat (entity_id_7) sits on a wooden bench, near a red door;"] * 30)
# (prediction, references, group): punctuation, brackets (-lrb- stays), contractions, quotes,
# references of different lengths ("closest"), |||, empty, one-word, unicode, very long.
CASES = [
    ("A man, wearing a hat; stands -- near the wall!", ["A man in a hat stands by a wall.", "man near wall"], "pose"),
    ("The car (red) is next to [the] tree {x}.", ["A red car (entity_id_2) beside a tree."], "color"),
    ("It isn't what they're doing, can't you see?", ["They aren't doing it.", "It's not that."], "pose"),
    ("She said \"hello\" and 'waved' at 5'10\" guy...", ["She waves hello to a tall guy."], "interaction"),
    ("dog", ["A brown dog.", "The dog is sitting on the grass next to a small child."], "category"),
    ("", ["An empty prediction scores zero."], "category"),
    ("a ||| b |||| c", ["a b c", "a ||| c"], "color"),
    ("Café naïve — 日本の猫 🙂 élan", ["A café with a naïve élan and a cat 🙂"], "color"),
    (LONG, ["The striped cat sits on a wooden bench near a red door."], "location"),
    ("A man, wearing a hat; stands -- near the wall!", ["A man stands near a wall."], "location"),
    ("Two (2) dogs' tails wag: left & right.", ["Two dogs wag their tails left and right."], "pose"),
    ("The U.S. flag, i.e. stars & stripes, flies high.", ["The American flag flies high on a pole."], "category"),
]
PREDICTIONS = [case[0] for case in CASES]
REFERENCES = [case[1] for case in CASES]
GROUPS = [case[2] for case in CASES]
