"""Every DingTalk errcode the flow can meet has a hint for a person, and an error carries it."""

from __future__ import annotations

import pytest

from oapi.errcodes import CODE_INVALID, CONFIGURATION, RATE_LIMITED, TOKEN_INVALID, classify
from oapi.hints import HINTS, hint_for

FLOW_CODES = sorted(
    TOKEN_INVALID
    | CONFIGURATION
    | CODE_INVALID
    | RATE_LIMITED
    | {-1, 88, 1111, 43004, 60121}
    | set(range(52010, 52020))
)


@pytest.mark.parametrize("errcode", FLOW_CODES)
def test_each_flow_errcode_has_a_one_line_hint(errcode: int) -> None:
    assert errcode in HINTS
    hint = hint_for(errcode)
    assert hint and "\n" not in hint and len(hint) < 300


@pytest.mark.parametrize("errcode", sorted(CONFIGURATION | CODE_INVALID | RATE_LIMITED | {-1}))
def test_errors_carry_the_hint(errcode: int) -> None:
    error = classify("gettoken", {"errcode": errcode, "errmsg": "x"}, token_fetch=True)
    assert error is not None and error.hint == hint_for(errcode) and error.errcode == errcode


def test_auth_wrapper_takes_the_sub_codes_hint() -> None:
    error = classify("user/getUseridByUnionid", {"errcode": 88, "sub_code": 42001, "errmsg": "x"}, token_fetch=False)
    assert error is not None and error.hint == hint_for(42001)


def test_unknown_errcode_gets_a_generic_hint() -> None:
    assert hint_for(123456) == hint_for(None) and hint_for(123456)
