"""The one error table, read both ways: the server's STATUS_FOR and the client's inverse of it."""

from __future__ import annotations

import grpc
import pytest

from service import errors
from service.client import error_for
from service.rpc.status import ERROR_FOR, STATUS_FOR, status_for


@pytest.mark.parametrize("cls", [c for c in STATUS_FOR if c is not errors.AeguardError])
def test_every_domain_error_comes_back_to_the_client_as_the_class_listed_first_for_its_code(cls):
    code = status_for(cls("the message"))
    back = error_for(code, "the message")
    first_listed = next(c for c, listed in STATUS_FOR.items() if listed is code)
    assert type(back) is first_listed and back.message == "the message"
    assert isinstance(back, errors.AeguardError)


def test_the_inverse_covers_every_code_of_the_table_but_internal():
    assert set(ERROR_FOR) == set(STATUS_FOR.values()) - {grpc.StatusCode.INTERNAL}
    assert ERROR_FOR[grpc.StatusCode.INVALID_ARGUMENT] is errors.InvalidInputError


def test_a_subclass_not_listed_takes_its_nearest_base_and_a_code_not_listed_names_itself():
    class TooWide(errors.InvalidInputError):
        pass

    assert status_for(TooWide("x")) is grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(errors.AeguardError("x")) is grpc.StatusCode.INTERNAL
    internal = error_for(grpc.StatusCode.INTERNAL, "internal error")
    assert (
        type(internal) is errors.AeguardError and internal.message == "server error INTERNAL: internal error"
    )
    by_number = error_for(grpc.StatusCode.NOT_FOUND.value[0], "no model 'x'")
    assert type(by_number) is errors.ModelNotFoundError
