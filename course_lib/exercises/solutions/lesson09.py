"""Solutions to the exercises of Lesson 09 (your own text)."""


def split_text(text, val_fraction):
    cut = int(len(text) * (1 - val_fraction))
    newline = text.rfind("\n", 0, cut)
    if newline > 0:  # train ends with a whole line, its line break included
        cut = newline + 1
    return text[:cut], text[cut:]
