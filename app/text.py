"""Small text predicates shared by the REST layer and the importers."""


def is_digits(text: str) -> bool:
    """True when `text` is one or more ASCII digits 0-9.

    `str.isdigit` also accepts superscripts and other Unicode digits ("²", "①") that `int()`
    then refuses, so client input is checked with this instead.
    """
    return text.isascii() and text.isdigit()
