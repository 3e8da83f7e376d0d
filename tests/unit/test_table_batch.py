"""The table transaction wire format, encoded and decoded without the Azure SDK.

The same code runs against Azurite in ``tests/integration/test_primitives.py`` (every
transaction test there goes through it); these tests pin the format itself.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from durable_azure.storage.primitives import TableOp, TableOpKind
from durable_azure.storage.table_batch import (
    BatchFailure,
    BatchFormatError,
    PartResult,
    decode_response,
    encode_request,
    entity_json,
)

TABLE = "http://127.0.0.1:10002/devstoreaccount1/HubHistory"


def op(kind: TableOpKind, etag: str | None = None, **props: object) -> TableOp:
    return TableOp(kind, {"PartitionKey": "o'k", "RowKey": "a b", **props}, etag=etag)


def requests_of(body: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """(request line, headers, body) of each change-set request."""
    text = body.decode()
    changeset = text.split("boundary=", 1)[1].split("\r\n", 1)[0]
    out = []
    for part in text.split(f"--{changeset}")[1:-1]:
        _, http = part.split("\r\n\r\n", 1)
        head, payload = http.split("\r\n\r\n", 1)
        line, *header_lines = head.split("\r\n")
        headers = dict(h.split(": ", 1) for h in header_lines)
        out.append((line, headers, payload.removesuffix("\r\n").encode()))
    return out


def test_each_kind_of_operation_becomes_its_request() -> None:
    ops = [
        op(TableOpKind.INSERT, n=1),
        op(TableOpKind.UPSERT_MERGE, n=2),
        op(TableOpKind.UPSERT_REPLACE, n=3),
        op(TableOpKind.UPDATE_MERGE, etag='W/"1"', n=4),
        op(TableOpKind.UPDATE_REPLACE, etag='W/"2"', n=5),
        op(TableOpKind.DELETE, etag='W/"3"'),
        op(TableOpKind.DELETE),
    ]
    content_type, body = encode_request(TABLE, ops, batch_id="fixed")
    assert content_type == "multipart/mixed; boundary=batch_fixed"
    sent = requests_of(body)
    entity_url = f"{TABLE}(PartitionKey='o%27%27k',RowKey='a%20b')"
    assert [line for line, _, _ in sent] == [
        f"POST {TABLE} HTTP/1.1",
        f"PATCH {entity_url} HTTP/1.1",
        f"PUT {entity_url} HTTP/1.1",
        f"PATCH {entity_url} HTTP/1.1",
        f"PUT {entity_url} HTTP/1.1",
        f"DELETE {entity_url} HTTP/1.1",
        f"DELETE {entity_url} HTTP/1.1",
    ]
    assert [h.get("If-Match") for _, h, _ in sent] == [
        None,
        None,
        None,
        'W/"1"',
        'W/"2"',
        'W/"3"',
        "*",
    ]
    assert sent[0][1]["Prefer"] == "return-no-content"
    for _, headers, payload in sent:
        assert int(headers["Content-Length"]) == len(payload)
    assert json.loads(sent[3][2]) == {"PartitionKey": "o'k", "RowKey": "a b", "n": 4}
    assert sent[5][2] == b""


def test_values_carry_the_types_json_cannot_tell() -> None:
    when = datetime(2026, 11, 24, 12, 30, 1, 250000, tzinfo=UTC)
    assert entity_json(
        {
            "s": "text",
            "b": True,
            "i": 7,
            "big": 2**40,
            "f": 2.0,
            "nan": float("nan"),
            "t": when,
            "bin": b"\x00\xff",
            "none": None,
        }
    ) == {
        "s": "text",
        "b": True,
        "i": 7,
        "big@odata.type": "Edm.Int64",
        "big": str(2**40),
        "f@odata.type": "Edm.Double",
        "f": 2.0,
        "nan@odata.type": "Edm.Double",
        "nan": "NaN",
        "t@odata.type": "Edm.DateTime",
        "t": "2026-11-24T12:30:01.250000Z",
        "bin@odata.type": "Edm.Binary",
        "bin": "AP8=",
    }
    with pytest.raises(ValueError, match="64 bits"):
        entity_json({"huge": 2**70})
    with pytest.raises(TypeError, match="unsupported type list"):
        entity_json({"bad": [1]})


def response(*parts: str, boundary: str = "batchresponse_x") -> tuple[str, bytes]:
    inner = "".join(
        "--changesetresponse_y\r\nContent-Type: application/http\r\n"
        f"Content-Transfer-Encoding: binary\r\n\r\n{p}\r\n"
        for p in parts
    )
    body = (
        f"--{boundary}\r\nContent-Type: multipart/mixed; boundary=changesetresponse_y\r\n\r\n"
        f"{inner}--changesetresponse_y--\r\n--{boundary}--\r\n"
    )
    return f"multipart/mixed; boundary={boundary}", body.encode()


def test_an_accepted_transaction_gives_each_operations_etag() -> None:
    decoded = decode_response(
        *response(
            "HTTP/1.1 204 No Content\r\nETag: W/\"datetime'2026-11-24T22%3A34%3A19.99Z'\"\r\n\r\n",
            'HTTP/1.1 201 Created\r\nETag: W/"e2"\r\n\r\n',
            "HTTP/1.1 204 No Content\r\nDataServiceVersion: 3.0;\r\n\r\n",  # a delete
        )
    )
    assert decoded == [
        PartResult(204, etag="W/\"datetime'2026-11-24T22%3A34%3A19.99Z'\""),
        PartResult(201, etag='W/"e2"'),
        PartResult(204, etag=""),
    ]


def test_a_rejected_transaction_names_the_failing_operation() -> None:
    error = {
        "odata.error": {
            "code": "UpdateConditionNotSatisfied",
            "message": {"lang": "en-US", "value": "3:The update condition was not satisfied."},
        }
    }
    decoded = decode_response(
        *response(
            "HTTP/1.1 412 Precondition Failed\r\nContent-ID: 4\r\n"
            f"Content-Type: application/json\r\n\r\n{json.dumps(error)}"
        )
    )
    assert isinstance(decoded, BatchFailure)
    assert decoded.index == 3  # from the message, as the service numbers them
    assert decoded.part.status == 412
    assert decoded.part.code == "UpdateConditionNotSatisfied"


def test_unreadable_responses_are_a_clear_error() -> None:
    with pytest.raises(BatchFormatError, match="no multipart boundary"):
        decode_response("application/json", b"{}")
    with pytest.raises(BatchFormatError, match="no part"):
        decode_response("multipart/mixed; boundary=b", b"nothing here")
    with pytest.raises(BatchFormatError, match="no HTTP status line"):
        decode_response(*response("garbage\r\n\r\n"))
