"""Drives every operation of the live service through the Python client that
openapi-python-client generated from its /openapi.json (scripts/clients_check.sh).

Checks what a user of the generated client relies on: typed models, the shared
Kind/Order/Rating enums passed between operations, X-On-Behalf-Of, the three
states of a PUT field (absent, null, a value), the typed not-found branch of a
batch get, the typed error envelope. Entries are read by the fields this
driver needs, never by their exact key set: the service may add fields.

Usage: LLM_FEEDBACK_URL=http://127.0.0.1:8080 LLM_FEEDBACK_KEY=lfk_... python driver.py
(with the generated package `llm_feedback_client` on PYTHONPATH).
"""

from __future__ import annotations

import csv
import io
import os
import sys
import uuid
from typing import TypeVar

from llm_feedback_client import AuthenticatedClient, Client
from llm_feedback_client.api.feedback import (
    batch_get_feedback,
    create_feedback,
    export_feedback,
    get_feedback,
    get_feedback_named_batch,
    list_feedback,
    update_feedback,
    update_feedback_named_batch,
)
from llm_feedback_client.api.operations import healthz, metrics, openapi_json, readyz
from llm_feedback_client.models import (
    BatchGet,
    BatchNotFound,
    CreateFeedback,
    ErrorResponse,
    Feedback,
    FeedbackList,
    Kind,
    Order,
    Rating,
    UpdateFeedback,
)
from llm_feedback_client.types import UNSET, Response, Unset

T = TypeVar("T")

CSV_HEADER = ["id", "model", "rating", "description", "user", "created_at", "updated_at"]


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def parsed(response: Response[T | ErrorResponse], status: int, what: str) -> T:
    """The typed body of a success with `status`; fails on anything else."""
    body = response.parsed
    check(
        response.status_code == status and body is not None and not isinstance(body, ErrorResponse),
        f"{what}: expected {status}, got {response.status_code} {response.content!r}",
    )
    assert body is not None and not isinstance(body, ErrorResponse)
    return body


def error_code(response: Response[T | ErrorResponse], status: int, what: str) -> str:
    """The `error.code` of an error answer with `status`."""
    body = response.parsed
    check(
        response.status_code == status and isinstance(body, ErrorResponse),
        f"{what}: expected a {status} ErrorResponse, got {response.status_code} {response.content!r}",
    )
    assert isinstance(body, ErrorResponse)
    return body.error.code


def operational(client: Client) -> None:
    health = healthz.sync_detailed(client=client)
    check(health.status_code == 200 and health.parsed == "ok", f"healthz: {health}")
    ready = readyz.sync_detailed(client=client)
    check(ready.status_code == 200 and ready.parsed == "ready", f"readyz: {ready}")
    exposition = metrics.sync_detailed(client=client)
    check(
        exposition.status_code == 200 and isinstance(exposition.parsed, str),
        f"metrics: {exposition.status_code}",
    )
    document = parsed(openapi_json.sync_detailed(client=client), 200, "openapi.json")
    check(
        str(document.additional_properties.get("openapi", "")).startswith("3.1"),
        f"openapi.json: {document.additional_properties.get('openapi')!r}",
    )


def entries(client: AuthenticatedClient, kind: Kind, run: str) -> None:
    user = f"user-{run}"
    other_user = f"other-{run}"
    first = f"py-{run}-{kind.value}-1"
    second = f"py-{run}-{kind.value}-2"

    # create: every field, as an end user.
    created = parsed(
        create_feedback.sync_detailed(
            kind,
            client=client,
            body=CreateFeedback(
                id=first, rating=Rating.THUMBS_DOWN, description="Could be more detailed.", model="gpt-4o"
            ),
            x_on_behalf_of=user,
        ),
        201,
        "create",
    )
    check(isinstance(created, Feedback), f"create: {created!r}")
    check(created.id == first and created.rating == Rating.THUMBS_DOWN, f"create: {created!r}")
    check(created.description == "Could be more detailed." and created.model == "gpt-4o", f"create: {created!r}")
    check(created.created_at == created.updated_at, f"create: timestamps {created!r}")
    # create: only the id, for the whole tenant; `null` on create means absent.
    bare = parsed(
        create_feedback.sync_detailed(kind, client=client, body=CreateFeedback(id=second, rating=None)),
        201,
        "create with only an id",
    )
    check(isinstance(bare.rating, Unset) and isinstance(bare.description, Unset), f"bare create: {bare!r}")
    code = error_code(
        create_feedback.sync_detailed(kind, client=client, body=CreateFeedback(id=first), x_on_behalf_of=user),
        409,
        "second create",
    )
    check(code == "conflict", f"second create: {code}")

    # get, scoped by X-On-Behalf-Of.
    got = parsed(get_feedback.sync_detailed(kind, first, client=client, x_on_behalf_of=user), 200, "get")
    check(got.id == first and got.created_at == created.created_at, f"get: {got!r}")
    code = error_code(
        get_feedback.sync_detailed(kind, first, client=client, x_on_behalf_of=other_user), 404, "get as another user"
    )
    check(code == "not_found", f"get as another user: {code}")

    # update: absent leaves a field, null clears it, a value replaces it.
    unchanged = parsed(
        update_feedback.sync_detailed(kind, first, client=client, body=UpdateFeedback(), x_on_behalf_of=user),
        200,
        "update {}",
    )
    check(
        unchanged.rating == Rating.THUMBS_DOWN and unchanged.description == "Could be more detailed.",
        f"update with absent fields changed them: {unchanged!r}",
    )
    check(unchanged.updated_at >= created.updated_at, f"update {{}}: updatedAt {unchanged!r}")
    cleared = parsed(
        update_feedback.sync_detailed(
            kind, first, client=client, body=UpdateFeedback(rating=None), x_on_behalf_of=user
        ),
        200,
        "update rating null",
    )
    check(isinstance(cleared.rating, Unset), f"null did not clear the rating: {cleared!r}")
    check(cleared.description == "Could be more detailed.", f"null rating touched the description: {cleared!r}")
    replaced = parsed(
        update_feedback.sync_detailed(
            kind,
            first,
            client=client,
            body=UpdateFeedback(rating=Rating.THUMBS_UP, description=None),
            x_on_behalf_of=user,
        ),
        200,
        "update rating value, description null",
    )
    check(
        replaced.rating == Rating.THUMBS_UP and isinstance(replaced.description, Unset),
        f"value/null: {replaced!r}",
    )
    described = parsed(
        update_feedback.sync_detailed(kind, first, client=client, body=UpdateFeedback(description=""), x_on_behalf_of=user),
        200,
        "update description empty",
    )
    check(described.description == "" and described.rating == Rating.THUMBS_UP, f"empty description: {described!r}")
    code = error_code(
        update_feedback.sync_detailed(kind, f"py-{run}-missing", client=client, body=UpdateFeedback()),
        404,
        "update of a missing entry",
    )
    check(code == "not_found", f"update of a missing entry: {code}")

    # The entry named `batch`: GET and PUT address it.
    parsed(create_feedback.sync_detailed(kind, client=client, body=CreateFeedback(id="batch")), 201, "create batch")
    named = parsed(
        update_feedback_named_batch.sync_detailed(
            kind, client=client, body=UpdateFeedback(rating=Rating.THUMBS_UP)
        ),
        200,
        "update batch",
    )
    check(named.id == "batch" and named.rating == Rating.THUMBS_UP, f"update batch: {named!r}")
    named = parsed(get_feedback_named_batch.sync_detailed(kind, client=client), 200, "get batch")
    check(named.id == "batch" and named.rating == Rating.THUMBS_UP, f"get batch: {named!r}")

    # list: the same Kind, Order and Rating types as every other operation.
    page = parsed(
        list_feedback.sync_detailed(kind, client=client, limit=1, order=Order.ASC), 200, "list, first page"
    )
    check(isinstance(page, FeedbackList) and page.object_ == "list", f"list: {page!r}")
    check(len(page.data) == 1 and page.has_more and page.data[0].id == first, f"list page 1: {page!r}")
    check(page.last_id == first, f"list page 1: last_id {page.last_id!r}")
    rest = parsed(
        list_feedback.sync_detailed(kind, client=client, after=first, limit=100, order=Order.ASC),
        200,
        "list, next page",
    )
    check([item.id for item in rest.data] == [second, "batch"], f"list page 2: {rest!r}")
    check(not rest.has_more and rest.data[0].model == "", f"list page 2: {rest!r}")
    mine = parsed(
        list_feedback.sync_detailed(kind, client=client, rating=Rating.THUMBS_UP, x_on_behalf_of=user),
        200,
        "list as the user",
    )
    check([item.id for item in mine.data] == [first], f"list as the user: {mine!r}")
    code = error_code(list_feedback.sync_detailed(kind, client=client, limit=0), 400, "list with limit 0")
    check(code == "invalid_request", f"list with limit 0: {code}")

    # batch get: entries and typed not-found results, in order.
    results = parsed(
        batch_get_feedback.sync_detailed(
            kind, client=client, body=BatchGet(ids=[second, f"py-{run}-missing", first])
        ),
        200,
        "batch get",
    ).results
    check(len(results) == 3, f"batch get: {results!r}")
    found, missing, found_again = results
    check(isinstance(found, Feedback) and found.id == second, f"batch get [0]: {found!r}")
    check(isinstance(missing, BatchNotFound), f"batch get [1] is not a BatchNotFound: {missing!r}")
    assert isinstance(missing, BatchNotFound)
    check(missing.id == f"py-{run}-missing" and missing.error == "not_found", f"batch get [1]: {missing!r}")
    check(isinstance(found_again, Feedback) and found_again.id == first, f"batch get [2]: {found_again!r}")
    scoped = parsed(
        batch_get_feedback.sync_detailed(kind, client=client, body=BatchGet(ids=[first, second]), x_on_behalf_of=user),
        200,
        "batch get as the user",
    ).results
    check(
        isinstance(scoped[0], Feedback) and isinstance(scoped[1], BatchNotFound),
        f"batch get as the user: {scoped!r}",
    )

    # CSV export.
    export = export_feedback.sync_detailed(kind, client=client, order=Order.ASC)
    check(export.status_code == 200 and isinstance(export.parsed, str), f"export: {export.status_code}")
    assert isinstance(export.parsed, str)
    check(export.headers.get("content-type", "").startswith("text/csv"), f"export: {export.headers}")
    check("x-export-truncated" not in export.headers, f"export: {export.headers}")
    rows = list(csv.reader(io.StringIO(export.parsed)))
    check(rows[0] == CSV_HEADER, f"export header: {rows[0]}")
    check([row[0] for row in rows[1:]] == [first, second, "batch"], f"export rows: {rows}")
    check(rows[1][4] == user and rows[1][1] == "gpt-4o", f"export row: {rows[1]}")
    export = export_feedback.sync_detailed(kind, client=client, rating=Rating.THUMBS_UP, x_on_behalf_of=user)
    assert isinstance(export.parsed, str)
    check(len(list(csv.reader(io.StringIO(export.parsed)))) == 2, f"export as the user: {export.parsed!r}")


def main() -> int:
    base_url = os.environ["LLM_FEEDBACK_URL"]
    key = os.environ["LLM_FEEDBACK_KEY"]
    run = uuid.uuid4().hex[:12]
    operational(Client(base_url=base_url))
    client = AuthenticatedClient(base_url=base_url, token=key)
    for kind in Kind:
        entries(client, kind, run)
    code = error_code(
        get_feedback.sync_detailed(Kind.COMPLETIONS, "x", client=AuthenticatedClient(base_url=base_url, token="lfk_wrong")),
        401,
        "a wrong key",
    )
    check(code == "unauthorized", f"a wrong key: {code}")
    print("python client: every operation works against the live service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
