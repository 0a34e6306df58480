"""The support console's hints are in Simplified Chinese for every errcode the gateway knows (issue 22, item 4)."""

from __future__ import annotations

import re

import pytest

from oapi.hints import HINTS, V1_HINTS, hint_for
from support.hints_zh import HINTS_ZH, hint_zh

HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize("code", sorted(HINTS, key=str) + sorted(V1_HINTS))
def test_every_known_errcode_has_a_chinese_hint(code: int | str) -> None:
    assert code in HINTS_ZH, f"no Chinese hint for {code!r}: the console would show English"
    assert HAN.search(hint_zh(code) or "")


def test_digits_as_text_find_the_number_and_unknown_codes_fall_back_to_english() -> None:
    assert hint_zh("60121") == HINTS_ZH[60121]
    assert hint_zh("SomeNewCode") == hint_for("SomeNewCode")
    assert hint_zh(None) is None
